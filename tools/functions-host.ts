/**
 * The one seam through which the Functions host meets the app: the Node worker answers
 * `require("@azure/functions-core")` with its own object, and @azure/functions registers every
 * `app.http`/`app.timer` through it (`registerFunction(metadata, handler)`). Outside the host that
 * module does not exist, @azure/functions falls back to "test mode" and registers nothing.
 *
 * installFunctionsCore() provides the module the same way the worker does (a hook on
 * Module.prototype.require, which the bundle's createRequire banner goes through too) and records what
 * is registered, so the bundle smoke test and `npm run bench` can see every function register and
 * call its handler as registered. It is a stand-in for the worker's module, not for any app code.
 */
import Module from "node:module";

export interface Registration {
  readonly name: string;
  /** The trigger binding's type, e.g. "httpTrigger", "timerTrigger". */
  readonly trigger: string;
  readonly metadata: {
    readonly name: string;
    readonly bindings: Record<string, { type: string; direction: string; [key: string]: unknown }>;
  };
  readonly handler: (...args: unknown[]) => unknown;
}

export interface FunctionsCore {
  readonly registrations: Registration[];
  /** Whether @azure/functions handed over its programming model, as it does in the host. */
  readonly programmingModel: () => unknown;
}

type Require = (this: unknown, id: string) => unknown;

/** Installs the stand-in for this process (idempotent) and returns the live record of registrations. */
export function installFunctionsCore(): FunctionsCore {
  const existing = (globalThis as { __functionsCore?: FunctionsCore }).__functionsCore;
  if (existing) return existing;
  const registrations: Registration[] = [];
  let model: unknown;
  const core = {
    version: "stand-in",
    hostVersion: "4.1000.0",
    setProgrammingModel: (value: unknown) => {
      model = value;
    },
    getProgrammingModel: () => model,
    registerHook: () => ({ dispose: () => {} }),
    log: () => {},
    registerFunction: (metadata: Registration["metadata"], handler: Registration["handler"]) => {
      const trigger = Object.values(metadata.bindings).find((b) => b.direction === "in" && /Trigger$/.test(b.type));
      registrations.push({ name: metadata.name, trigger: trigger?.type ?? "unknown", metadata, handler });
      return { dispose: () => {} };
    },
  };
  const proto = (Module as unknown as { prototype: { require: Require } }).prototype;
  const original = proto.require;
  proto.require = function (this: unknown, id: string) {
    return id === "@azure/functions-core" ? core : original.call(this, id);
  };
  const installed: FunctionsCore = { registrations, programmingModel: () => model };
  (globalThis as { __functionsCore?: FunctionsCore }).__functionsCore = installed;
  return installed;
}
