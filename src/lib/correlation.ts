/**
 * The ids a support case with Microsoft needs for a failed service call: the service's
 * `x-ms-request-id` (its own log key) and the `x-ms-client-request-id` the pipeline sent (set by
 * core-rest-pipeline's setClientRequestIdPolicy, so the request can be found even when no answer
 * came). HSM errors carry them as fields; storage failures (RestError from storage-blob /
 * data-tables) carry them in `response.headers` and `request.requestId`.
 */
export interface RequestIds {
  readonly requestId?: string;
  readonly clientRequestId?: string;
}

interface HeaderBag {
  get(name: string): string | undefined;
}

/** Request ids are GUIDs or similar tokens: anything else a hostile answer put there is not repeated. */
const ID = /^[A-Za-z0-9-]{1,100}$/;

function clean(value: unknown): string | undefined {
  return typeof value === "string" && ID.test(value.trim()) ? value.trim() : undefined;
}

interface SentRequest {
  readonly requestId?: string;
  readonly headers?: HeaderBag;
}

/** The ids of one exchange: the answer's headers (if any) and the request that was sent. */
export function requestIdsOf(
  response: { headers: HeaderBag; request?: SentRequest } | undefined,
  request: SentRequest | undefined = response?.request,
): RequestIds {
  const requestId = clean(response?.headers.get("x-ms-request-id"));
  const clientRequestId =
    clean(request?.headers?.get("x-ms-client-request-id") ?? request?.requestId) ??
    clean(response?.headers.get("x-ms-client-request-id"));
  return { ...(requestId ? { requestId } : {}), ...(clientRequestId ? { clientRequestId } : {}) };
}

/**
 * The ids of any failure: an app error that carries them (requestId / clientRequestId fields), a
 * RestError (response headers, request id), or nothing. Looks through `cause` a few levels deep.
 */
export function requestIdsOfError(error: unknown): RequestIds {
  for (
    let e: unknown = error, depth = 0;
    e && typeof e === "object" && depth < 4;
    e = (e as { cause?: unknown }).cause, depth++
  ) {
    const fields = e as { requestId?: unknown; clientRequestId?: unknown; response?: unknown; request?: unknown };
    const own = { requestId: clean(fields.requestId), clientRequestId: clean(fields.clientRequestId) };
    if (own.requestId || own.clientRequestId) {
      return {
        ...(own.requestId ? { requestId: own.requestId } : {}),
        ...(own.clientRequestId ? { clientRequestId: own.clientRequestId } : {}),
      };
    }
    const response = fields.response as { headers?: HeaderBag } | undefined;
    const request = fields.request as SentRequest | undefined;
    const hasHeaders = typeof response?.headers?.get === "function";
    if (hasHeaders || typeof request?.requestId === "string") {
      const ids = requestIdsOf(hasHeaders ? (response as { headers: HeaderBag }) : undefined, request);
      if (ids.requestId || ids.clientRequestId) return ids;
    }
  }
  return {};
}

/** "x-ms-request-id X, x-ms-client-request-id Y", or "" when neither is known. */
export function describeRequestIds(ids: RequestIds): string {
  return [
    ids.requestId && `x-ms-request-id ${ids.requestId}`,
    ids.clientRequestId && `x-ms-client-request-id ${ids.clientRequestId}`,
  ]
    .filter(Boolean)
    .join(", ");
}

/** " (x-ms-request-id X, x-ms-client-request-id Y)" to append to a message, or "". */
export function requestIdsSuffix(ids: RequestIds): string {
  const text = describeRequestIds(ids);
  return text ? ` (${text})` : "";
}
