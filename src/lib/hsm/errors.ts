import type { PipelineResponse } from "@azure/core-rest-pipeline";
import { requestIdsOf, requestIdsSuffix, type RequestIds } from "../correlation.js";
import { redactSecrets } from "../redact.js";
import type { HsmOperationState, OperationKind } from "./types.js";

/**
 * How far a call got before it failed. Only "unanswered" leaves the HSM's state unknown: a call that
 * was never sent (no token, DNS, a refused connection) cannot have started anything, and an
 * answered call says what happened.
 */
export type Delivery = "notSent" | "unanswered" | "answered";

/** The HSM answered a call with an unexpected HTTP status, or the call got no answer. */
export class HsmRequestError extends Error {
  readonly delivery: Delivery;
  /** The HSM's x-ms-request-id, when it answered. */
  readonly requestId: string | undefined;
  /** The x-ms-client-request-id the app sent, when the call got as far as the pipeline. */
  readonly clientRequestId: string | undefined;
  constructor(
    readonly operation: string,
    readonly vaultUrl: string,
    readonly statusCode: number | undefined,
    readonly code: string | undefined,
    readonly serviceMessage: string,
    delivery?: Delivery,
    ids: RequestIds = {},
  ) {
    super(
      redactSecrets(
        `Managed HSM ${vaultUrl} ${operation}: ${statusCode !== undefined ? `HTTP ${statusCode}${code ? ` ${code}` : ""}: ` : ""}${serviceMessage}${requestIdsSuffix(ids)}`,
      ),
    );
    this.name = "HsmRequestError";
    this.delivery = delivery ?? (statusCode === undefined ? "unanswered" : "answered");
    this.requestId = ids.requestId;
    this.clientRequestId = ids.clientRequestId;
  }

  /** The call may have reached the HSM, but no answer arrived: the HSM may or may not have acted on it. */
  get unanswered(): boolean {
    return this.delivery === "unanswered";
  }

  /** The call never left the app (credential, DNS, refused connection): nothing can have started. */
  get notSent(): boolean {
    return this.delivery === "notSent";
  }

  /** Reads the KeyVaultError body ({"error":{"code","message"}}) when there is one. */
  static fromResponse(operation: string, vaultUrl: string, response: PipelineResponse): HsmRequestError {
    let code: string | undefined;
    let message: string | undefined;
    try {
      const body = JSON.parse(response.bodyAsText ?? "") as { error?: { code?: unknown; message?: unknown } };
      if (typeof body.error?.code === "string") code = body.error.code.slice(0, 100);
      if (typeof body.error?.message === "string") message = body.error.message.slice(0, 1000);
    } catch {
      // Not JSON: the status line is all there is.
    }
    const fallback =
      response.status === 401
        ? "not authorized (the token was refused or the challenge could not be answered)"
        : response.status === 403
          ? "forbidden: the app's identity lacks the Managed HSM local role for this operation"
          : response.status >= 300 && response.status < 400
            ? `an unexpected redirect${response.headers.get("location") ? " to another location" : ""}, not followed`
            : "no error details in the answer";
    return new HsmRequestError(
      operation,
      vaultUrl,
      response.status,
      code,
      message ?? fallback,
      "answered",
      requestIdsOf(response),
    );
  }
}

/**
 * The HSM answered, but with something the app cannot use: not JSON, no or a malformed job id, a
 * status for another job, a status word nobody documented, a Succeeded backup without a folder or
 * with a folder outside the app's container. Such an answer is never trusted as given.
 */
export class HsmInvalidResponseError extends Error {
  readonly code = "InvalidServiceResponse";
  readonly requestId: string | undefined;
  readonly clientRequestId: string | undefined;
  constructor(
    readonly operation: string,
    readonly vaultUrl: string,
    readonly problem: string,
    ids: RequestIds = {},
  ) {
    super(redactSecrets(`Managed HSM ${vaultUrl} ${operation}: invalid answer: ${problem}${requestIdsSuffix(ids)}`));
    this.name = "HsmInvalidResponseError";
    this.requestId = ids.requestId;
    this.clientRequestId = ids.clientRequestId;
  }

  /** The same error, naming the exchange it came from (parseOperation does not see the headers). */
  withIds(ids: RequestIds): HsmInvalidResponseError {
    return this.requestId || this.clientRequestId
      ? this
      : new HsmInvalidResponseError(this.operation, this.vaultUrl, this.problem, ids);
  }
}

/** The job ended Failed or Canceled, or the status endpoint answered it with a terminal error. */
export class HsmJobFailedError extends Error {
  readonly code: string | undefined;
  readonly serviceMessage: string;
  readonly status: "Failed" | "Canceled";
  /** The job's final state when the service reported one (absent when a status read failed terminally). */
  readonly state: HsmOperationState | undefined;
  /** x-ms-request-id of the status read that reported the failure, when known. */
  readonly requestId: string | undefined;
  readonly clientRequestId: string | undefined;
  constructor(
    readonly kind: OperationKind,
    readonly vaultUrl: string,
    readonly jobId: string,
    cause: HsmRequestError | HsmOperationState,
    readIds: RequestIds = {},
  ) {
    const fromRequest = cause instanceof HsmRequestError;
    const code = fromRequest ? cause.code : cause.error?.code;
    // The service often repeats the same text in error.message and statusDetails: say it once.
    const details = fromRequest
      ? cause.serviceMessage
      : [...new Set([cause.error?.message, cause.statusDetails].filter((s): s is string => !!s))].join("; ") ||
        "no details given";
    const status = fromRequest ? `status read failed with HTTP ${cause.statusCode}` : `ended ${cause.status}`;
    const ids: RequestIds = fromRequest
      ? {
          ...(cause.requestId ? { requestId: cause.requestId } : {}),
          ...(cause.clientRequestId ? { clientRequestId: cause.clientRequestId } : {}),
        }
      : readIds;
    super(
      redactSecrets(
        `Managed HSM ${vaultUrl} ${kind} job ${jobId} ${status}${code ? ` (${code})` : ""}: ${details}${requestIdsSuffix(ids)}`,
      ),
    );
    this.requestId = ids.requestId;
    this.clientRequestId = ids.clientRequestId;
    this.name = "HsmJobFailedError";
    this.code = code ?? (fromRequest ? `HTTP${cause.statusCode}` : cause.status);
    this.serviceMessage = redactSecrets(details);
    this.status = !fromRequest && cause.status === "Canceled" ? "Canceled" : "Failed";
    this.state = fromRequest ? undefined : cause;
  }
}

/** Status reads kept failing transiently: the job's outcome is unknown (it may still be running). */
export class HsmStatusUnavailableError extends Error {
  /** Of the last read, when it got an answer (or at least a client request id). */
  readonly requestId: string | undefined;
  readonly clientRequestId: string | undefined;
  constructor(
    readonly kind: OperationKind,
    readonly vaultUrl: string,
    readonly jobId: string,
    readonly lastProblem: string,
    attempts: number,
    ids: RequestIds = {},
  ) {
    super(
      redactSecrets(
        `Managed HSM ${vaultUrl} ${kind} job ${jobId}: status unavailable after ${attempts} attempt(s) (last: ${lastProblem}${requestIdsSuffix(ids)}); the job may still be running`,
      ),
    );
    this.name = "HsmStatusUnavailableError";
    this.requestId = ids.requestId;
    this.clientRequestId = ids.clientRequestId;
  }
}

/** The wait reached its deadline before the job ended (or before its status could be read). */
export class HsmWaitDeadlineError extends Error {
  constructor(
    readonly kind: OperationKind,
    readonly vaultUrl: string,
    readonly jobId: string,
    readonly deadline: Date,
    /** The last status the HSM gave, if any. */
    readonly lastState: HsmOperationState | undefined,
    /** Why the last reads told nothing, if they did not. */
    readonly lastProblem: string | undefined,
  ) {
    const known = lastState
      ? `last status ${lastState.status}${lastState.statusDetails ? ` (${lastState.statusDetails})` : ""}`
      : "no status read yet";
    super(
      redactSecrets(
        `Managed HSM ${vaultUrl} ${kind} job ${jobId}: still not ended at the deadline ${deadline.toISOString()}; ${known}${lastProblem ? `; last problem: ${lastProblem}` : ""}`,
      ),
    );
    this.name = "HsmWaitDeadlineError";
  }
}
