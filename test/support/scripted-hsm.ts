/**
 * A Managed HSM transport that answers from a script, the way a recorded session is replayed
 * (recordings.ts): the client under test is the real ManagedHsmBackupClient with its real pipeline
 * and Key Vault challenge policy; only the wire answers are written down here. A request without a
 * token gets the challenge the real service sends (401 with the recorded WWW-Authenticate), and
 * every authorised request takes the next scripted answer.
 */
import type { AccessToken, TokenCredential } from "@azure/core-auth";
import {
  createHttpHeaders,
  type HttpClient,
  type PipelineRequest,
  type PipelineResponse,
} from "@azure/core-rest-pipeline";
import { ManagedHsmBackupClient, type ManagedHsmBackupClientOptions } from "../../src/lib/hsm/client.js";

export const VAULT = "https://contoso.managedhsm.azure.net";
export const JOB = "0123456789abcdef0123456789abcdef";
export const CHALLENGE =
  'Bearer authorization="https://login.microsoftonline.com/12345678-1234-1234-1234-123456789012", resource="https://managedhsm.azure.net"';

export interface Answer {
  readonly status: number;
  readonly headers?: Readonly<Record<string, string>>;
  /** An object is sent as JSON, a string as it is. */
  readonly body?: unknown;
}

/** What the transport does with one authorised request: answer, or fail like a socket would. */
export type Step = Answer | Error | ((request: PipelineRequest) => Answer | Error | Promise<Answer | Error>);

export interface SentRequest {
  readonly method: string;
  readonly url: URL;
  readonly body: unknown;
  readonly headers: Readonly<Record<string, string>>;
}

export class ScriptedHsm implements HttpClient {
  readonly sent: SentRequest[] = [];
  private readonly steps: Step[];

  constructor(
    steps: readonly Step[] = [],
    private readonly challenge = CHALLENGE,
  ) {
    this.steps = [...steps];
  }

  push(...steps: Step[]): void {
    this.steps.push(...steps);
  }

  get remaining(): number {
    return this.steps.length;
  }

  async sendRequest(request: PipelineRequest): Promise<PipelineResponse> {
    if (!request.headers.has("authorization")) {
      return {
        request,
        status: 401,
        headers: createHttpHeaders({ "www-authenticate": this.challenge }),
        bodyAsText: "",
      };
    }
    const url = new URL(request.url);
    this.sent.push({
      method: request.method,
      url,
      body: typeof request.body === "string" ? JSON.parse(request.body) : null,
      headers: request.headers.toJSON(),
    });
    let step = this.steps.shift();
    if (step === undefined) throw new Error(`ScriptedHsm: no answer scripted for ${request.method} ${url.pathname}`);
    if (typeof step === "function") step = await step(request);
    if (step instanceof Error) throw step;
    const body = step.body === undefined ? "" : typeof step.body === "string" ? step.body : JSON.stringify(step.body);
    return { request, status: step.status, headers: createHttpHeaders({ ...step.headers }), bodyAsText: body };
  }
}

export const tokenCredential: TokenCredential = {
  getToken: async (): Promise<AccessToken> => ({ token: "scripted-token", expiresOnTimestamp: Date.now() + 3_600_000 }),
};

/** A clock that only moves when the client waits: every delay advances it by what was asked. */
export class WaitClock {
  readonly waits: number[] = [];
  private ms = Date.parse("2026-12-01T00:00:00Z");
  now = (): Date => new Date(this.ms);
  delay = async (ms: number): Promise<void> => {
    this.waits.push(ms);
    this.ms += ms;
  };
}

export function scriptedClient(steps: readonly Step[] = [], options: ManagedHsmBackupClientOptions = {}) {
  const hsm = new ScriptedHsm(steps);
  const clock = new WaitClock();
  const client = new ManagedHsmBackupClient(VAULT, tokenCredential, {
    httpClient: hsm,
    delay: clock.delay,
    now: clock.now,
    defaultPollIntervalMs: 1000,
    maxStatusAttempts: 1,
    ...options,
  });
  return { client, hsm, clock };
}

/** A FullBackupOperation body as the service sends it. */
export function operation(status: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    status,
    statusDetails: null,
    error: null,
    startTime: 1_764_547_200,
    endTime: null,
    jobId: JOB,
    azureStorageBlobContainerUri: null,
    ...extra,
  };
}

export const accepted = (extra: Record<string, unknown> = {}, headers: Record<string, string> = {}): Answer => ({
  status: 202,
  headers,
  body: operation("InProgress", extra),
});
export const status = (
  word: string,
  extra: Record<string, unknown> = {},
  headers: Record<string, string> = {},
): Answer => ({ status: 200, headers, body: operation(word, extra) });

/** A failure's message without the request ids every service call carries (correlation.test.ts covers those). */
export function withoutRequestIds(message: string): string {
  return message.replace(/ \((?:x-ms-request-id [^,)]+, )?x-ms-client-request-id [0-9a-f-]+\)/g, "");
}
