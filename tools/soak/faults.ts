/**
 * The soak's bad nights: what can go wrong between the app and one Managed HSM (through the fault
 * proxy in front of its emulator, or in the emulator itself) and between the app and its catalog
 * table. Every choice is drawn from a seeded PRNG, so a seed names a fault plan.
 */
import type { FaultProxy, ProxiedAnswer } from "../fault-proxy.js";
import type { HsmEmulator } from "../hsm-emulator/index.js";

export type Rng = () => number;

export function between(rng: Rng, low: number, high: number): number {
  return low + Math.floor(rng() * (high - low + 1));
}

/** What a fault may act on for one HSM. */
export interface HsmUnderTest {
  readonly proxy: FaultProxy;
  readonly emulator: HsmEmulator;
  /** Job ids whose status answer a fault rewrote into a lie: the app may rightly refuse them. */
  readonly tampered: Set<string>;
}

const START = /^\/backup\/?$/;
const STATUS = /^\/backup\/[^/]+\/pending\/?$/;
/** The HTTP date form of Retry-After, far in the future: the app must cap it, not sleep until 2100. */
const FAR_FUTURE = "Fri, 31 Dec 2100 23:59:59 GMT";
const FOREIGN_FOLDER = "https://attacker.blob.core.windows.net/loot/mhsm-stolen-2026010100000000";

interface HsmFault {
  readonly name: string;
  readonly weight: number;
  apply(target: HsmUnderTest, rng: Rng): void;
}

function html(answer: ProxiedAnswer): ProxiedAnswer {
  return {
    ...answer,
    headers: { ...answer.headers, "content-type": "text/html" },
    bodyText: "<html><body><h1>502 Bad Gateway</h1></body></html>",
  };
}

/** Rewrites a JSON answer's body; anything that is not JSON passes unchanged. */
function rewriteJson(
  answer: ProxiedAnswer,
  change: (body: Record<string, unknown>) => Record<string, unknown> | undefined,
): ProxiedAnswer {
  let body: Record<string, unknown>;
  try {
    body = JSON.parse(answer.bodyText) as Record<string, unknown>;
  } catch {
    return answer;
  }
  const changed = change(body);
  return changed ? { ...answer, bodyText: JSON.stringify(changed) } : answer;
}

function otherJobId(rng: Rng): string {
  return Array.from({ length: 32 }, () => "0123456789abcdef"[Math.floor(rng() * 16)]).join("");
}

/**
 * The first status answer of this night that says Succeeded is turned into a lie (and its job id
 * noted as tampered); every other answer passes. Queued last: it takes every status read after it.
 */
function lieAboutSuccess(target: HsmUnderTest, lie: (body: Record<string, unknown>) => Record<string, unknown>): void {
  let done = false;
  target.proxy.inject(
    {
      kind: "rewrite",
      transform: (answer) =>
        rewriteJson(answer, (body) => {
          if (done || answer.status !== 200 || body.status !== "Succeeded" || typeof body.jobId !== "string")
            return undefined;
          done = true;
          target.tampered.add(body.jobId);
          return lie(body);
        }),
    },
    { method: "GET", path: STATUS, times: 10_000 },
  );
}

/** Faults of one HSM. A night draws a few of them; the weights say how often each comes up. */
export const HSM_FAULTS: readonly HsmFault[] = [
  {
    name: "statusHang",
    weight: 2,
    apply: (t, rng) => t.proxy.inject({ kind: "hang" }, { method: "GET", path: STATUS, times: between(rng, 1, 2) }),
  },
  {
    name: "statusSlow",
    weight: 3,
    apply: (t, rng) =>
      t.proxy.inject(
        { kind: "delay", ms: between(rng, 50, 250) },
        { method: "GET", path: STATUS, times: between(rng, 1, 3) },
      ),
  },
  {
    name: "status429Storm",
    weight: 3,
    apply: (t, rng) =>
      t.proxy.inject(
        { kind: "status", status: 429, retryAfter: "86400" },
        { method: "GET", path: STATUS, times: between(rng, 2, 8) },
      ),
  },
  {
    name: "status503FarFuture",
    weight: 3,
    apply: (t, rng) =>
      t.proxy.inject(
        { kind: "status", status: 503, retryAfter: FAR_FUTURE },
        { method: "GET", path: STATUS, times: between(rng, 2, 8) },
      ),
  },
  {
    name: "status302",
    weight: 2,
    apply: (t, rng) =>
      t.proxy.inject(
        { kind: "status", status: 302, body: "", headers: { location: "http://login.example.invalid/" } },
        { method: "GET", path: STATUS, times: between(rng, 1, 3) },
      ),
  },
  {
    name: "statusLost",
    weight: 2,
    apply: (t, rng) =>
      t.proxy.inject({ kind: "lostResponse" }, { method: "GET", path: STATUS, times: between(rng, 1, 2) }),
  },
  {
    name: "statusHtml",
    weight: 2,
    apply: (t, rng) =>
      t.proxy.inject({ kind: "rewrite", transform: html }, { method: "GET", path: STATUS, times: between(rng, 1, 3) }),
  },
  {
    name: "statusNotJson",
    weight: 1,
    apply: (t, rng) =>
      t.proxy.inject(
        {
          kind: "rewrite",
          transform: (a) => ({ ...a, bodyText: a.bodyText.slice(0, Math.floor(a.bodyText.length / 2)) }),
        },
        { method: "GET", path: STATUS, times: between(rng, 1, 3) },
      ),
  },
  {
    name: "statusWrongJob",
    weight: 2,
    apply: (t, rng) =>
      t.proxy.inject(
        { kind: "rewrite", transform: (a) => rewriteJson(a, (b) => ({ ...b, jobId: otherJobId(rng) })) },
        { method: "GET", path: STATUS, times: between(rng, 1, 3) },
      ),
  },
  {
    name: "statusTimedOut",
    weight: 2,
    apply: (t, rng) =>
      t.proxy.inject(
        { kind: "rewrite", transform: (a) => rewriteJson(a, (b) => ({ ...b, status: "TimedOut" })) },
        { method: "GET", path: STATUS, times: between(rng, 1, 3) },
      ),
  },
  {
    name: "start503Storm",
    weight: 3,
    apply: (t, rng) =>
      t.proxy.inject(
        { kind: "status", status: rng() < 0.5 ? 503 : 429, retryAfter: rng() < 0.5 ? "86400" : FAR_FUTURE },
        { method: "POST", path: START, times: between(rng, 1, 5) },
      ),
  },
  {
    name: "emulatorThrottle",
    weight: 3,
    apply: (t, rng) => t.emulator.faults.throttleNext(between(rng, 1, 6), rng() < 0.5 ? 429 : 503, 86400),
  },
  {
    name: "startLost",
    weight: 3,
    apply: (t) => t.proxy.inject({ kind: "lostResponse" }, { method: "POST", path: START }),
  },
  { name: "startHang", weight: 1, apply: (t) => t.proxy.inject({ kind: "hang" }, { method: "POST", path: START }) },
  {
    name: "startRefused",
    weight: 1,
    apply: (t) => t.proxy.inject({ kind: "refuse" }, { method: "POST", path: START }),
  },
  {
    name: "startHtml",
    weight: 2,
    apply: (t) => t.proxy.inject({ kind: "rewrite", transform: html }, { method: "POST", path: START }),
  },
  {
    name: "startWrongJob",
    weight: 1,
    apply: (t, rng) =>
      t.proxy.inject(
        {
          kind: "rewrite",
          transform: (a) => rewriteJson(a, (b) => (a.status === 202 ? { ...b, jobId: otherJobId(rng) } : undefined)),
        },
        { method: "POST", path: START },
      ),
  },
  {
    name: "startHugeRetryAfter",
    weight: 2,
    apply: (t) =>
      t.proxy.inject(
        { kind: "rewrite", transform: (a) => ({ ...a, headers: { ...a.headers, "retry-after": "86400" } }) },
        { method: "POST", path: START },
      ),
  },
  {
    name: "jobFails",
    weight: 4,
    apply: (t) =>
      t.emulator.faults.failNextJob("backup", {
        code: "InternalError",
        message: "Injected by the soak: the HSM could not complete the backup.",
      }),
  },
  {
    // The pre-flight's own check fails: the night's record is Failed PreflightFailed, and no backup job starts.
    name: "preBackupFails",
    weight: 2,
    apply: (t) =>
      t.emulator.faults.failNextJob("prebackup", {
        code: "StorageAccessFailed",
        message: "Injected by the soak: the HSM's pre-backup check could not write to the container.",
      }),
  },
  {
    name: "statusChaos",
    weight: 2,
    apply: (t) =>
      t.proxy.chaos(
        { status: 0.15, lostResponse: 0.05, delay: 0.1 },
        { method: "GET", path: STATUS, status: 503, delayMs: 100 },
      ),
  },
  // These take every status read after them: the rest of the night's status faults come before them.
  {
    name: "statusOutage",
    weight: 2,
    apply: (t) =>
      t.proxy.inject(
        { kind: "status", status: 503, retryAfter: "86400" },
        { method: "GET", path: STATUS, times: 10_000 },
      ),
  },
  {
    name: "succeededNoFolder",
    weight: 2,
    apply: (t) => lieAboutSuccess(t, (b) => ({ ...b, azureStorageBlobContainerUri: null })),
  },
  {
    name: "succeededForeignFolder",
    weight: 2,
    apply: (t) => lieAboutSuccess(t, (b) => ({ ...b, azureStorageBlobContainerUri: FOREIGN_FOLDER })),
  },
];

const TOTAL_WEIGHT = HSM_FAULTS.reduce((sum, f) => sum + f.weight, 0);

/** 0-2 faults (a third of nights none), applied in menu order so the catch-all ones come last. */
export function drawHsmFaults(rng: Rng): HsmFault[] {
  const count = rng() < 0.3 ? 0 : between(rng, 1, 2);
  const chosen = new Set<HsmFault>();
  for (let i = 0; i < count; i++) {
    let draw = rng() * TOTAL_WEIGHT;
    const fault = HSM_FAULTS.find((f) => (draw -= f.weight) < 0) ?? HSM_FAULTS[0]!;
    chosen.add(fault);
  }
  return HSM_FAULTS.filter((f) => chosen.has(f));
}

/** Table faults of a bad night: 503s, answers lost after the write landed, requests that hang. */
export const TABLE_CHAOS = { status: 0.02, lostResponse: 0.015, hang: 0.01 } as const;
