/**
 * What every function file needs at registration, and nothing more: the route wrapper, the JSON
 * answer and the lazily built dependencies. Nothing here (or below it) loads the HSM, storage or
 * identity stacks; they are imported on the first invocation that uses them, so a new worker
 * registers its functions in milliseconds (issue 9).
 */
import type { HttpRequest, HttpResponseInit, InvocationContext } from "@azure/functions";
import { ConfigError } from "./config.js";
import type { AppDeps } from "./deps.js";
import { safeLogger } from "./logger.js";
import { ProblemError, problemResponse } from "./problem.js";
import { toSafeError } from "./redact.js";

export type Handler = (request: HttpRequest, context: InvocationContext, deps?: AppDeps) => Promise<HttpResponseInit>;

/**
 * The handlers' dependencies from the app settings, built on the first invocation: the import of
 * deps.js (and with it storage, identity and the HSM client) happens here, never at registration.
 */
export async function appDeps(): Promise<AppDeps> {
  const { getDeps } = await import("./deps.js");
  return getDeps();
}

/**
 * Wraps a route: ProblemErrors become problem+json answers; anything else is a fault of ours or of a
 * dependency, logged in full (redacted) and answered 500 without internals. Dependencies come from
 * the app settings unless a test passes its own.
 */
export function route(
  handler: (request: HttpRequest, context: InvocationContext, deps: AppDeps) => Promise<HttpResponseInit>,
): Handler {
  return async (request, context, deps) => {
    const instance = new URL(request.url).pathname;
    try {
      return await handler(request, context, deps ?? (await appDeps()));
    } catch (error) {
      if (error instanceof ProblemError) {
        if (error.status >= 500) safeLogger(context).error(`${request.method} ${instance}: ${error.message}`);
        return problemResponse(error, instance);
      }
      const safe = toSafeError(error);
      safeLogger(context).error(`${request.method} ${instance} failed: ${safe.name}: ${safe.message}`);
      if (error instanceof ConfigError) {
        // Names the setting and nothing of its value: /api/health is anonymous, and a value can be an
        // internal host name. The function log has the whole message.
        return problemResponse(
          new ProblemError(
            500,
            "Configuration error",
            `App setting ${error.setting} is missing or malformed; the function log has the details under invocation ${context.invocationId}.`,
          ),
          instance,
        );
      }
      return problemResponse(
        new ProblemError(
          500,
          "Internal error",
          `The request could not be completed; the function log has the details under invocation ${context.invocationId}.`,
        ),
        instance,
      );
    }
  };
}

export function json(status: number, body: unknown, headers: Record<string, string> = {}): HttpResponseInit {
  return { status, jsonBody: body, headers: { "Content-Type": "application/json", ...headers } };
}
