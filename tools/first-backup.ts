/**
 * azd postdeploy hook: takes the first backup of every HSM that has none yet, through the deployed
 * app's own POST /api/backups, and says clearly why when it cannot.
 *
 * Why postdeploy and not postprovision: `azd up` runs provision, then deploy, so after provisioning
 * the function app exists but runs no code yet. After deploy it does; this asks it, so the backup is
 * exactly the one the timer takes (same settings, same identity, same catalog).
 *
 * Idempotent: an HSM that already has a successful backup is left alone, so every later `azd deploy`
 * costs two reads and starts nothing. The function key is read through Azure Resource Manager
 * (`host/default/listKeys`) with azd's own sign-in — no Azure CLI needed — and is never printed.
 *
 * Environment (azd's, from main.bicep's outputs and azd itself): SERVICE_API_URI,
 * AZURE_SUBSCRIPTION_ID, AZURE_RESOURCE_GROUP, AZURE_FUNCTION_APP_NAME, MANAGED_HSM_URLS,
 * optionally AZURE_TENANT_ID.
 */
import { pathToFileURL } from "node:url";
import type { TokenCredential } from "@azure/core-auth";
import { hsmNameOf } from "../src/lib/config.js";
import { redactSecrets } from "../src/lib/redact.js";
import { azdHookCredential } from "./azd-credential.js";

/** The Microsoft.Web api-version for host/default/listKeys. */
export const WEB_API_VERSION = "2023-12-01";
const ARM_ENDPOINT = "https://management.azure.com";

export interface FirstBackupSettings {
  /** https://<app>.azurewebsites.net (or a local stand-in). */
  readonly appUrl: string;
  readonly hsmNames: readonly string[];
  /** Where the app's function key is read: subscription, resource group and app name. */
  readonly subscriptionId: string;
  readonly resourceGroup: string;
  readonly appName: string;
  readonly tenantId?: string;
}

export interface FirstBackupOptions {
  readonly appUrl: string;
  readonly hsmNames: readonly string[];
  /** Reads the function key; its failure is reported as such (see fetchFunctionKey). */
  readonly functionKey: () => Promise<string>;
  readonly log?: (line: string) => void;
  /** How long the app may take to answer at all after a deploy (cold start, route sync). Default 5 min. */
  readonly reachDeadlineMs?: number;
  /** How long to wait for the backups to end. Default 20 min; a backup still running then is reported, not failed. */
  readonly outcomeDeadlineMs?: number;
  readonly pollIntervalMs?: number;
  /** Per HTTP call. Default 60 s. */
  readonly requestTimeoutMs?: number;
}

/** One HSM's part: "existing" (already had a success), or the outcome of the backup taken now. */
export interface FirstBackupResult {
  readonly hsm: string;
  readonly outcome: "existing" | "Succeeded" | "Running" | "Skipped" | "Failed" | "NotStarted";
  readonly detail: string;
  readonly statusUrl?: string;
}

/** Outcomes the hook exits non-zero for: the first backup failed or was never started. */
export const NOT_DONE: readonly FirstBackupResult["outcome"][] = ["Failed", "NotStarted"];

class HookError extends Error {}

/** Reads the hook's settings from azd's environment; errors name the variable and where it comes from. */
export function readFirstBackupSettings(env: Readonly<Record<string, string | undefined>>): FirstBackupSettings {
  const required = (name: string, from: string): string => {
    const value = env[name]?.trim();
    if (!value) throw new HookError(`${name} is not set: ${from}`);
    return value;
  };
  const appUrl = required("SERVICE_API_URI", "it is an output of infra/main.bicep; run azd provision first");
  if (!URL.canParse(appUrl)) throw new HookError(`SERVICE_API_URI "${appUrl}" is not a URL`);
  const hsmUrls = required("MANAGED_HSM_URLS", "azd env set MANAGED_HSM_URLS https://<name>.managedhsm.azure.net")
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s.length > 0);
  const bad = hsmUrls.find((u) => !URL.canParse(u));
  if (bad !== undefined) throw new HookError(`MANAGED_HSM_URLS holds "${bad}", which is not a URL`);
  const tenantId = env.AZURE_TENANT_ID?.trim();
  return {
    appUrl: appUrl.replace(/\/+$/, ""),
    hsmNames: hsmUrls.map((u) => hsmNameOf(new URL(u))),
    subscriptionId: required("AZURE_SUBSCRIPTION_ID", "azd sets it when the environment is created"),
    resourceGroup: required("AZURE_RESOURCE_GROUP", "it is an output of infra/main.bicep; run azd provision first"),
    appName: required("AZURE_FUNCTION_APP_NAME", "it is an output of infra/main.bicep; run azd provision first"),
    ...(tenantId ? { tenantId } : {}),
  };
}

/**
 * The app's default function key, from Azure Resource Manager with the signed-in user's token. Needs
 * Microsoft.Web/sites/host/listkeys/action on the app (Contributor or Website Contributor), which
 * whoever ran `azd provision` has.
 */
export async function fetchFunctionKey(
  settings: Pick<FirstBackupSettings, "subscriptionId" | "resourceGroup" | "appName">,
  credential: TokenCredential,
  { armEndpoint = ARM_ENDPOINT, requestTimeoutMs = 60_000 } = {},
): Promise<string> {
  const { subscriptionId, resourceGroup, appName } = settings;
  const where = `function app ${appName} (resource group ${resourceGroup})`;
  const token = await credential.getToken(`${armEndpoint}/.default`).catch((error: unknown) => {
    throw new HookError(`could not sign in to Azure Resource Manager (${message(error)}); run azd auth login`);
  });
  if (!token) throw new HookError("could not sign in to Azure Resource Manager; run azd auth login");
  const url = `${armEndpoint}/subscriptions/${encodeURIComponent(subscriptionId)}/resourceGroups/${encodeURIComponent(resourceGroup)}/providers/Microsoft.Web/sites/${encodeURIComponent(appName)}/host/default/listKeys?api-version=${WEB_API_VERSION}`;
  const response = await call(
    url,
    { method: "POST", headers: { authorization: `Bearer ${token.token}` } },
    requestTimeoutMs,
  );
  if (response.status === 401 || response.status === 403) {
    throw new HookError(
      `reading the function key of ${where} was refused (${response.status}): the signed-in account needs Contributor or Website Contributor on it (Microsoft.Web/sites/host/listkeys/action)`,
    );
  }
  if (response.status === 404) throw new HookError(`${where} was not found: run azd provision first`);
  if (response.status !== 200) throw new HookError(`reading the function key of ${where} answered ${response.status}`);
  const key = (response.body as { functionKeys?: { default?: unknown } } | undefined)?.functionKeys?.default;
  if (typeof key !== "string" || key.length === 0)
    throw new HookError(`${where} has no default function key (functionKeys.default); create one in the portal`);
  return key;
}

/**
 * Takes the first backup of each HSM with none yet (one POST /api/backups per HSM: each is its own
 * failure domain) and waits for the outcomes until the deadline. Never throws for one HSM's trouble:
 * each result says what happened and what to do. Throws (HookError) when the app cannot be used at all.
 */
export async function takeFirstBackups(options: FirstBackupOptions): Promise<FirstBackupResult[]> {
  const log = options.log ?? console.log;
  const timeout = options.requestTimeoutMs ?? 60_000;
  const poll = options.pollIntervalMs ?? 10_000;
  let key: string;
  try {
    key = await options.functionKey();
  } catch (error) {
    throw new HookError(`no function key to call ${options.appUrl}: ${message(error)}`);
  }
  const api = async (method: "GET" | "POST", path: string, body?: unknown) => {
    const response = await call(
      `${options.appUrl}${path}`,
      {
        method,
        headers: { "x-functions-key": key, ...(body !== undefined ? { "content-type": "application/json" } : {}) },
        ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
      },
      timeout,
    );
    if (response.status === 401 || response.status === 403)
      throw new HookError(`${options.appUrl} refused the function key (${response.status})`);
    return response;
  };

  // After a deploy the host may still be starting or syncing its routes: 404/5xx/no answer are retried.
  const reachBy = Date.now() + (options.reachDeadlineMs ?? 5 * 60_000);
  const pending: string[] = [];
  const results: FirstBackupResult[] = [];
  for (const hsm of options.hsmNames) {
    const path = `/api/backups?hsm=${encodeURIComponent(hsm)}&status=Succeeded&top=1`;
    let response = await api("GET", path).catch(unreachable);
    while (!isAnswer(response) && Date.now() < reachBy) {
      log(`first-backup: ${options.appUrl} is not ready yet (${describeFailure(response)}); trying again`);
      await sleep(poll);
      response = await api("GET", path).catch(unreachable);
    }
    if (!isAnswer(response)) {
      throw new HookError(
        `${options.appUrl} did not answer GET /api/backups (${describeFailure(response)}): is the app deployed and running? Run azd deploy, then this hook again (azd hooks run postdeploy)`,
      );
    }
    if (response.status !== 200)
      throw new HookError(`GET /api/backups answered ${response.status}: ${problem(response)}`);
    const items = (response.body as { items?: unknown[] } | undefined)?.items;
    if (!Array.isArray(items)) throw new HookError("GET /api/backups did not answer a listing (items)");
    const newest = items[0] as { id?: string; endedAt?: string } | undefined;
    if (newest) {
      const detail = `already backed up (record ${newest.id ?? "?"}, ended ${newest.endedAt ?? "?"}); nothing to do`;
      log(`first-backup: ${hsm}: ${detail}`);
      results.push({ hsm, outcome: "existing", detail });
    } else {
      pending.push(hsm);
    }
  }

  const started: { hsm: string; statusUrl: string }[] = [];
  for (const hsm of pending) {
    const response = await api("POST", "/api/backups", { hsm }).catch(unreachable);
    if (response.status !== 202) {
      const detail = `POST /api/backups was not accepted (${describeFailure(response)})`;
      log(`first-backup: ${hsm}: ${detail}`);
      results.push({ hsm, outcome: "NotStarted", detail });
      continue;
    }
    const entry = (response.body as { backups?: BackupEntry[] } | undefined)?.backups?.find((b) => b.hsm === hsm);
    const record = entry?.record;
    if (!entry?.statusUrl || !record) {
      const detail = `the app recorded no backup: ${entry?.detail ?? "no entry in its answer"}`;
      log(`first-backup: ${hsm}: ${detail}`);
      results.push({ hsm, outcome: "NotStarted", detail });
    } else if (record.status === "Running" || record.status === "Starting") {
      log(`first-backup: ${hsm}: backup started (record ${record.id}), waiting for it`);
      started.push({ hsm, statusUrl: entry.statusUrl });
    } else {
      results.push(settled(hsm, record, entry.statusUrl));
    }
  }

  const outcomeBy = Date.now() + (options.outcomeDeadlineMs ?? 20 * 60_000);
  const waits = started.map(async ({ hsm, statusUrl }): Promise<FirstBackupResult> => {
    for (;;) {
      const response = await api("GET", statusUrl).catch(unreachable);
      const record = response.status === 200 ? (response.body as BackupEntry["record"]) : undefined;
      if (record && record.status !== "Running" && record.status !== "Starting") return settled(hsm, record, statusUrl);
      if (Date.now() + poll > outcomeBy) {
        const detail = `still ${record?.status ?? `unread (${describeFailure(response)})`} after waiting; the app records its outcome — check ${options.appUrl}${statusUrl}`;
        return { hsm, outcome: "Running", detail, statusUrl };
      }
      await sleep(poll);
    }
  });
  for (const result of await Promise.all(waits)) {
    log(`first-backup: ${result.hsm}: ${result.outcome}: ${result.detail}`);
    results.push(result);
  }
  return options.hsmNames.map((hsm) => results.find((r) => r.hsm === hsm)!);
}

interface BackupEntry {
  readonly hsm: string;
  readonly statusUrl?: string;
  readonly detail?: string;
  readonly record?: {
    readonly id: string;
    readonly status: string;
    readonly folderUri?: string;
    readonly errorCode?: string;
    readonly errorMessage?: string;
  };
}

function settled(hsm: string, record: NonNullable<BackupEntry["record"]>, statusUrl: string): FirstBackupResult {
  if (record.status === "Succeeded")
    return {
      hsm,
      outcome: "Succeeded",
      detail: `backed up to ${record.folderUri ?? "?"} (record ${record.id})`,
      statusUrl,
    };
  const why = `${record.errorCode ? `${record.errorCode}: ` : ""}${record.errorMessage ?? "no reason given"}`;
  if (record.status === "Skipped")
    return { hsm, outcome: "Skipped", detail: `not taken now (${why}); the nightly run takes it`, statusUrl };
  return {
    hsm,
    outcome: "Failed",
    detail: `${record.status} (${why}). Role assignments can take minutes to take effect after provisioning: fix what the message names, then run this hook again (azd hooks run postdeploy)`,
    statusUrl,
  };
}

interface Answer {
  readonly status: number;
  readonly body: unknown;
  readonly failure?: string;
}

async function call(url: string, init: RequestInit, timeoutMs: number): Promise<Answer> {
  const response = await fetch(url, { ...init, signal: AbortSignal.timeout(timeoutMs) });
  const text = await response.text();
  let body: unknown;
  try {
    body = text ? JSON.parse(text) : undefined;
  } catch {
    body = undefined;
  }
  return { status: response.status, body };
}

function unreachable(error: unknown): Answer {
  if (error instanceof HookError) throw error;
  return { status: 0, body: undefined, failure: message(error) };
}

/** An answer from the app itself: not "no answer", not the platform's 404/5xx while the host starts. */
function isAnswer(response: Answer): boolean {
  return response.status !== 0 && response.status !== 404 && response.status < 500;
}

function describeFailure(response: Answer): string {
  if (response.status === 0) return `no answer: ${response.failure ?? "unknown"}`;
  return `${response.status}${problem(response) ? `: ${problem(response)}` : ""}`;
}

function problem(response: Answer): string {
  const body = response.body as { title?: unknown; detail?: unknown } | undefined;
  return [body?.title, body?.detail].filter((s) => typeof s === "string").join(": ");
}

function message(error: unknown): string {
  const cause = error instanceof Error && error.cause instanceof Error ? ` (${error.cause.message})` : "";
  return redactSecrets(`${error instanceof Error ? error.message : String(error)}${cause}`);
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * The hook: azd's environment in, one line per HSM out. Exit code 1 when any HSM's first backup
 * failed or could not be started (azd then shows the hook failed, with the reason above it); a backup
 * still running at the deadline is not a failure.
 */
export async function runFirstBackupHook(
  env: Readonly<Record<string, string | undefined>>,
  log: (line: string) => void = console.log,
): Promise<FirstBackupResult[]> {
  const settings = readFirstBackupSettings(env);
  const credential = await azdHookCredential(settings.tenantId);
  log(`first-backup: taking the first backup of each HSM that has none yet, through ${settings.appUrl}`);
  return takeFirstBackups({
    appUrl: settings.appUrl,
    hsmNames: settings.hsmNames,
    functionKey: () => fetchFunctionKey(settings, credential),
    log,
  });
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  runFirstBackupHook(process.env)
    .then((results) => {
      if (results.some((r) => NOT_DONE.includes(r.outcome))) process.exitCode = 1;
    })
    .catch((error: unknown) => {
      console.error(`first-backup: ${message(error)}`);
      process.exitCode = 1;
    });
}
