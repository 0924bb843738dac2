import type { PipelineResponse } from "@azure/core-rest-pipeline";
import { redactSecrets } from "../redact.js";
import type { HsmOperationState, OperationKind } from "./poller.js";

/** The HSM answered a call with an unexpected HTTP status (or no answer arrived for a start call). */
export class HsmRequestError extends Error {
  constructor(
    readonly operation: string,
    readonly vaultUrl: string,
    readonly statusCode: number | undefined,
    readonly code: string | undefined,
    readonly serviceMessage: string,
  ) {
    super(redactSecrets(`Managed HSM ${vaultUrl} ${operation}: ${statusCode !== undefined ? `HTTP ${statusCode}${code ? ` ${code}` : ""}: ` : ""}${serviceMessage}`));
    this.name = "HsmRequestError";
  }

  /** No answer arrived, so the HSM may or may not have acted on the call. */
  get unanswered(): boolean {
    return this.statusCode === undefined;
  }

  /** Reads the KeyVaultError body ({"error":{"code","message"}}) when there is one. */
  static fromResponse(operation: string, vaultUrl: string, response: PipelineResponse): HsmRequestError {
    let code: string | undefined;
    let message: string | undefined;
    try {
      const body = JSON.parse(response.bodyAsText ?? "") as { error?: { code?: unknown; message?: unknown } };
      if (typeof body.error?.code === "string") code = body.error.code;
      if (typeof body.error?.message === "string") message = body.error.message;
    } catch {
      // Not JSON: the status line is all there is.
    }
    const fallback = response.status === 401
      ? "not authorized (the token was refused or the challenge could not be answered)"
      : response.status === 403
        ? "forbidden: the app's identity lacks the Managed HSM local role for this operation"
        : "no error details in the answer";
    return new HsmRequestError(operation, vaultUrl, response.status, code, message ?? fallback);
  }
}

/** The job ended Failed or Canceled, or the status endpoint answered it with a terminal error. */
export class HsmJobFailedError extends Error {
  readonly code: string | undefined;
  readonly serviceMessage: string;
  readonly status: "Failed" | "Canceled";
  /** The job's final state when the service reported one (absent when a status read failed terminally). */
  readonly state: HsmOperationState | undefined;
  constructor(
    readonly kind: OperationKind,
    readonly vaultUrl: string,
    readonly jobId: string,
    cause: HsmRequestError | HsmOperationState,
  ) {
    const fromRequest = cause instanceof HsmRequestError;
    const code = fromRequest ? cause.code : cause.error?.code;
    // The service often repeats the same text in error.message and statusDetails: say it once.
    const details = fromRequest
      ? cause.serviceMessage
      : [...new Set([cause.error?.message, cause.statusDetails].filter((s): s is string => !!s))].join("; ") || "no details given";
    const status = fromRequest ? `status read failed with HTTP ${cause.statusCode}` : `ended ${cause.status}`;
    super(redactSecrets(`Managed HSM ${vaultUrl} ${kind} job ${jobId} ${status}${code ? ` (${code})` : ""}: ${details}`));
    this.name = "HsmJobFailedError";
    this.code = code ?? (fromRequest ? `HTTP${cause.statusCode}` : cause.status);
    this.serviceMessage = redactSecrets(details);
    this.status = !fromRequest && cause.status === "Canceled" ? "Canceled" : "Failed";
    this.state = fromRequest ? undefined : cause;
  }
}

/** Status reads kept failing transiently: the job's outcome is unknown (it may still be running). */
export class HsmStatusUnavailableError extends Error {
  constructor(
    readonly kind: OperationKind,
    readonly vaultUrl: string,
    readonly jobId: string,
    lastProblem: string,
    attempts: number,
  ) {
    super(redactSecrets(`Managed HSM ${vaultUrl} ${kind} job ${jobId}: status unavailable after ${attempts} attempts (last: ${lastProblem}); the job may still be running`));
    this.name = "HsmStatusUnavailableError";
  }
}
