import type { HttpResponseInit } from "@azure/functions";
import { redactSecrets } from "./redact.js";

/**
 * A failure that is the client's (4xx) or a dependency's (502/503) and is answered as RFC 9457
 * problem details. Anything else thrown is a bug: logged and answered 500 by the handler wrapper.
 */
export class ProblemError extends Error {
  constructor(
    readonly status: number,
    readonly title: string,
    readonly detail: string,
    readonly extensions: Readonly<Record<string, unknown>> = {},
    readonly headers: Readonly<Record<string, string>> = {},
  ) {
    super(redactSecrets(`${title}: ${detail}`));
    this.name = "ProblemError";
  }
}

export function problemResponse(problem: ProblemError, instance?: string): HttpResponseInit {
  return {
    status: problem.status,
    headers: { "Content-Type": "application/problem+json", ...problem.headers },
    body: redactSecrets(
      JSON.stringify({
        type: "about:blank",
        title: problem.title,
        status: problem.status,
        detail: problem.detail,
        ...(instance !== undefined ? { instance } : {}),
        ...problem.extensions,
      }),
    ),
  };
}
