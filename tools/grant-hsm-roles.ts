/**
 * azd postprovision hook: grants the function app's identity, and the operators who run the hsm-backup
 * CLI against the deployment, their Managed HSM local roles.
 *
 * Bicep/ARM cannot assign Managed HSM local RBAC roles (hashicorp/terraform-provider-azurerm#20112):
 * they live in the HSM's data plane. So after `azd provision`, this grants the app's principal
 * "Managed HSM Backup" on every HSM at scope "/", and "Managed HSM Restore" when RESTORE_ENABLED is
 * true (and revokes the Restore assignment it made itself when RESTORE_ENABLED turns false). Each
 * operator in OPERATOR_PRINCIPAL_IDS gets exactly the same: the CLI runs the app's code as them.
 *
 * Idempotent: an assignment the principal already holds at "/" (under any name) is left as is, and a
 * new one gets a name derived from HSM + principal + role, so a re-run can never add a second copy.
 * The signed-in user (azd's, or the Azure CLI's) needs Managed HSM Administrator or Managed HSM Policy
 * Administrator on each HSM.
 *
 * Environment (azd passes main.bicep's outputs): MANAGED_HSM_URLS, FUNCTION_IDENTITY_PRINCIPAL_ID,
 * RESTORE_ENABLED, optionally OPERATOR_PRINCIPAL_IDS (comma-separated) and AZURE_TENANT_ID.
 */
import { createHash } from "node:crypto";
import { pathToFileURL } from "node:url";
import type { TokenCredential } from "@azure/core-auth";
import {
  createDefaultHttpClient,
  createHttpHeaders,
  createPipelineFromOptions,
  createPipelineRequest,
  type HttpClient,
  type HttpMethods,
  type Pipeline,
  type PipelineResponse,
} from "@azure/core-rest-pipeline";
import { keyVaultAuthenticationPolicy } from "@azure/keyvault-common";
import { isLoopback } from "../src/lib/config.js";
import { azdHookCredential } from "./azd-credential.js";

/** Managed HSM built-in local roles (MicrosoftDocs azure-security-docs, managed-hsm/built-in-roles.md). */
export const HSM_ROLE_IDS = {
  /** Managed HSM Backup: backup/start, backup/status, keys/backup. No restore. */
  backup: "7b127d3c-77bd-4e3e-bbe0-dbb8971fa7f8",
  /** Managed HSM Restore: restore/start, restore/status, keys/restore. */
  restore: "6efe6056-5259-49d2-8b3d-d3d73544b20b",
} as const;

const ROLE_NAMES: Record<string, string> = {
  [HSM_ROLE_IDS.backup]: "Managed HSM Backup",
  [HSM_ROLE_IDS.restore]: "Managed HSM Restore",
};

/** The data-plane RBAC api-version of the Role Assignments REST reference. */
export const RBAC_API_VERSION = "7.4";

/** The form the HSM itself returns in role definitions and assignments. */
const ROLE_DEFINITION_PREFIX = "Microsoft.KeyVault/providers/Microsoft.Authorization/roleDefinitions/";

/** Namespace of this tool's name-based (v5) assignment names; fixed forever, or re-runs would duplicate. */
const ASSIGNMENT_NAMESPACE = "0057ce0c-cb54-42c9-8af2-0d7cd25720cf";

const GUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export interface GrantHsmRolesOptions {
  /** Base URLs of the HSMs, e.g. https://contoso.managedhsm.azure.net */
  readonly hsmUrls: readonly string[];
  /** Object (principal) id of the function app's identity. */
  readonly principalId: string;
  /** Object ids of the operators (OPERATOR_PRINCIPAL_IDS), granted and revoked exactly as the app's identity. */
  readonly operatorPrincipalIds?: readonly string[];
  /** Also grant Managed HSM Restore; when false, revoke the Restore assignment this tool made. */
  readonly restoreEnabled: boolean;
  readonly credential: TokenCredential;
  /**
   * Skip the check that the 401 challenge's resource matches the HSM's host. Only for loopback hosts
   * (a local emulator, whose host can never match "managedhsm.azure.net"); refused for any other host.
   */
  readonly disableChallengeResourceVerification?: boolean;
  /** One line per action; default console.log. */
  readonly log?: (line: string) => void;
  /** Transport override (tests); default the pipeline's own. */
  readonly httpClient?: HttpClient;
}

export type GrantAction = "granted" | "already-granted" | "revoked" | "not-granted";

export interface GrantResult {
  readonly hsm: string;
  /** The principal the role is for: the app's identity or an operator. */
  readonly principalId: string;
  readonly role: string;
  readonly roleDefinitionId: string;
  readonly action: GrantAction;
  /** Name of the assignment created, found or deleted; undefined for "not-granted". */
  readonly assignmentName?: string;
}

interface RoleAssignment {
  readonly name: string;
  readonly properties: { readonly scope?: string; readonly roleDefinitionId?: string; readonly principalId?: string };
}

/**
 * The deterministic assignment name for (HSM, principal, role): a version-5 UUID, so the same inputs
 * always give the same name and a re-run finds, rather than duplicates, what an earlier run made.
 */
export function assignmentName(hsmUrl: string, principalId: string, roleId: string): string {
  const origin = new URL(hsmUrl).origin.toLowerCase();
  const bytes = createHash("sha1")
    .update(Buffer.from(ASSIGNMENT_NAMESPACE.replace(/-/g, ""), "hex"))
    .update(`${origin}|${principalId.toLowerCase()}|${roleId.toLowerCase()}`, "utf8")
    .digest()
    .subarray(0, 16);
  bytes[6] = (bytes[6]! & 0x0f) | 0x50;
  bytes[8] = (bytes[8]! & 0x3f) | 0x80;
  const hex = bytes.toString("hex");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** Checks an HSM URL; plain http and a disabled challenge check are accepted only for loopback hosts. */
export function parseHsmUrl(value: string, disableChallengeResourceVerification: boolean): URL {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new Error(`HSM URL "${value}" is not a URL`);
  }
  if (url.pathname !== "/" || url.search || url.hash) {
    throw new Error(`HSM URL "${value}" must be the HSM's base URL, with no path or query`);
  }
  const loopback = isLoopback(url.hostname);
  if (url.protocol !== "https:" && !(url.protocol === "http:" && loopback)) {
    throw new Error(`HSM URL "${value}" must use https (plain http is accepted only for a loopback emulator)`);
  }
  if (disableChallengeResourceVerification && !loopback) {
    throw new Error(
      `refusing to disable challenge resource verification for "${value}": it is allowed only for loopback hosts (a local emulator); ` +
        "a real HSM's challenge must be checked against its host so that a token is never sent to a look-alike server",
    );
  }
  return url;
}

/**
 * Grants (or confirms) the roles on every HSM and returns what was done. Throws on the first failure,
 * naming the HSM and the HTTP error.
 */
export async function grantHsmRoles(options: GrantHsmRolesOptions): Promise<GrantResult[]> {
  const log = options.log ?? ((line: string) => console.log(line));
  const disableVerification = options.disableChallengeResourceVerification ?? false;
  if (!GUID.test(options.principalId)) {
    throw new Error(
      `principal id "${options.principalId}" is not a GUID (expected the object id of the app's identity)`,
    );
  }
  const operators = options.operatorPrincipalIds ?? [];
  const malformed = operators.find((id) => !GUID.test(id));
  if (malformed !== undefined) {
    throw new Error(`operator principal id "${malformed}" is not a GUID (expected an object id)`);
  }
  // Each principal once, the app's identity first: a second PUT of the same name would be a no-op anyway.
  const principals = [options.principalId, ...operators].filter(
    (id, i, all) => all.findIndex((other) => other.toLowerCase() === id.toLowerCase()) === i,
  );
  // Validate every URL before touching any HSM: fail whole, not halfway.
  const urls = options.hsmUrls.map((value) => parseHsmUrl(value, disableVerification));
  if (urls.length === 0) throw new Error("no HSM URLs given");

  const results: GrantResult[] = [];
  for (const url of urls) {
    const client = new HsmRbacClient(url, options.credential, disableVerification, options.httpClient);
    const held = await client.listAssignmentsAtRoot();
    const wanted = [HSM_ROLE_IDS.backup, ...(options.restoreEnabled ? [HSM_ROLE_IDS.restore] : [])];
    for (const principalId of principals) {
      for (const roleId of wanted) {
        results.push(await ensureGranted(client, held, principalId, roleId, log));
      }
      if (!options.restoreEnabled) {
        results.push(await revokeOwn(client, held, principalId, HSM_ROLE_IDS.restore, log));
      }
    }
  }
  return results;
}

function resultBase(client: HsmRbacClient, principalId: string, roleId: string) {
  return {
    hsm: client.origin,
    principalId,
    role: ROLE_NAMES[roleId] ?? roleId,
    roleDefinitionId: ROLE_DEFINITION_PREFIX + roleId,
  };
}

async function ensureGranted(
  client: HsmRbacClient,
  held: readonly RoleAssignment[],
  principalId: string,
  roleId: string,
  log: (line: string) => void,
): Promise<GrantResult> {
  const base = resultBase(client, principalId, roleId);
  const existing = held.find((a) => holds(a, principalId, roleId));
  if (existing) {
    log(`${client.origin}: ${base.role} already granted to ${principalId} at scope / (assignment ${existing.name})`);
    return { ...base, action: "already-granted", assignmentName: existing.name };
  }
  const name = assignmentName(client.origin, principalId, roleId);
  const response = await client.send("PUT", name, {
    properties: { roleDefinitionId: ROLE_DEFINITION_PREFIX + roleId, principalId },
  });
  if (response.status === 200 || response.status === 201) {
    log(`${client.origin}: granted ${base.role} to ${principalId} at scope / (assignment ${name})`);
    return { ...base, action: "granted", assignmentName: name };
  }
  // Someone granted the same role between our listing and our PUT, or the service refuses a second
  // assignment of one role to one principal: the principal has the role, which is what we want.
  const error = errorOf(response);
  if (
    response.status === 409 &&
    /exist/i.test(`${error.code} ${error.message}`) &&
    !/UpdateNotPermitted/i.test(error.code)
  ) {
    log(`${client.origin}: ${base.role} already granted to ${principalId} at scope / (${error.code || "409"})`);
    return { ...base, action: "already-granted", assignmentName: name };
  }
  throw client.failure(`granting ${base.role} to ${principalId}`, response);
}

async function revokeOwn(
  client: HsmRbacClient,
  held: readonly RoleAssignment[],
  principalId: string,
  roleId: string,
  log: (line: string) => void,
): Promise<GrantResult> {
  const base = resultBase(client, principalId, roleId);
  const name = assignmentName(client.origin, principalId, roleId);
  const own = held.find((a) => a.name.toLowerCase() === name && holds(a, principalId, roleId));
  const others = held.filter((a) => a !== own && holds(a, principalId, roleId)).map((a) => a.name);
  if (own) {
    const response = await client.send("DELETE", name);
    if (response.status !== 200 && response.status !== 204 && response.status !== 404) {
      throw client.failure(`revoking ${base.role} from ${principalId}`, response);
    }
    log(`${client.origin}: revoked ${base.role} from ${principalId} (assignment ${name}): RESTORE_ENABLED is false`);
  } else {
    log(`${client.origin}: ${base.role} not granted to ${principalId}: RESTORE_ENABLED is false`);
  }
  if (others.length > 0) {
    log(
      `${client.origin}: note: ${principalId} still holds ${base.role} through assignment(s) ${others.join(", ")}, not made by this hook; left alone`,
    );
  }
  return own ? { ...base, action: "revoked", assignmentName: name } : { ...base, action: "not-granted" };
}

function holds(assignment: RoleAssignment, principalId: string, roleId: string): boolean {
  const props = assignment.properties;
  return (
    (props.scope ?? "/") === "/" &&
    props.principalId?.toLowerCase() === principalId.toLowerCase() &&
    (props.roleDefinitionId ?? "").toLowerCase().endsWith(`/${roleId}`)
  );
}

function errorOf(response: PipelineResponse): { code: string; message: string } {
  try {
    const body = JSON.parse(response.bodyAsText ?? "") as { error?: { code?: unknown; message?: unknown } };
    return { code: String(body.error?.code ?? ""), message: String(body.error?.message ?? "") };
  } catch {
    return { code: "", message: response.bodyAsText ?? "" };
  }
}

let sharedHttpClient: HttpClient | undefined;

/** The few role-assignment calls this hook makes, on one HSM. */
class HsmRbacClient {
  readonly origin: string;
  private readonly pipeline: Pipeline;
  private readonly allowInsecureConnection: boolean;

  constructor(
    url: URL,
    credential: TokenCredential,
    disableChallengeResourceVerification: boolean,
    private readonly httpClient: HttpClient | undefined,
  ) {
    this.origin = url.origin;
    this.allowInsecureConnection = url.protocol === "http:";
    this.pipeline = createPipelineFromOptions({ userAgentOptions: { userAgentPrefix: "mhsm-backup-grant-hsm-roles" } });
    // The HSM's 401 challenge names the resource and tenant; this policy answers it with a token for
    // https://managedhsm.azure.net and, unless disabled (loopback only, checked by parseHsmUrl),
    // verifies that the challenge's resource matches the host the request went to.
    this.pipeline.addPolicy(keyVaultAuthenticationPolicy(credential, { disableChallengeResourceVerification }));
  }

  /** Every assignment listed at scope "/" (all pages); callers keep those whose scope is "/". */
  async listAssignmentsAtRoot(): Promise<RoleAssignment[]> {
    const all: RoleAssignment[] = [];
    let next: string | undefined = `${this.collectionUrl()}?api-version=${RBAC_API_VERSION}`;
    while (next !== undefined) {
      const response = await this.request("GET", next);
      if (response.status !== 200) throw this.failure("listing role assignments at scope /", response);
      const page = JSON.parse(response.bodyAsText ?? "{}") as { value?: RoleAssignment[]; nextLink?: string | null };
      all.push(...(page.value ?? []));
      next = page.nextLink ?? undefined;
      if (next !== undefined && new URL(next).origin !== this.origin) {
        throw new Error(
          `${this.origin}: the role assignment listing points to another host (${new URL(next).origin}); refusing to follow it`,
        );
      }
    }
    return all;
  }

  send(method: "PUT" | "DELETE", name: string, body?: unknown): Promise<PipelineResponse> {
    return this.request(method, `${this.collectionUrl()}/${name}?api-version=${RBAC_API_VERSION}`, body);
  }

  failure(what: string, response: PipelineResponse): Error {
    const { code, message } = errorOf(response);
    const hint =
      response.status === 403
        ? ' The signed-in identity needs Managed HSM Administrator or Managed HSM Policy Administrator on this HSM (az keyvault role assignment create --hsm-name <name> --role "Managed HSM Administrator" --scope / --assignee <you>).'
        : response.status === 401
          ? " The HSM rejected the token: sign in to the HSM's tenant (azd auth login / az login --tenant <tenant>)."
          : "";
    return new Error(
      `${this.origin}: ${what} failed: HTTP ${response.status}${code ? ` ${code}` : ""}${message ? `: ${message}` : ""}.${hint}`,
    );
  }

  /** Scope "/" in the SDKs' form: `{hsm}/` + `/` (scope) + `/providers/...`, as the recorded real traffic has it. */
  private collectionUrl(): string {
    return `${this.origin}///providers/Microsoft.Authorization/roleAssignments`;
  }

  private async request(method: HttpMethods, url: string, body?: unknown): Promise<PipelineResponse> {
    const request = createPipelineRequest({
      url,
      method,
      headers: createHttpHeaders({
        accept: "application/json",
        ...(body === undefined ? {} : { "content-type": "application/json" }),
      }),
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      allowInsecureConnection: this.allowInsecureConnection,
    });
    const client = this.httpClient ?? (sharedHttpClient ??= createDefaultHttpClient());
    try {
      return await this.pipeline.sendRequest(client, request);
    } catch (error) {
      throw new Error(
        `${this.origin}: ${method} ${new URL(url).pathname} failed: ${error instanceof Error ? error.message : String(error)}`,
        {
          cause: error,
        },
      );
    }
  }
}

export interface HookSettings {
  readonly hsmUrls: string[];
  readonly principalId: string;
  readonly restoreEnabled: boolean;
  readonly operatorPrincipalIds: string[];
  readonly tenantId?: string;
}

/** Reads the hook's settings from azd's environment (main.bicep outputs); errors name the variable. */
export function readHookSettings(env: Readonly<Record<string, string | undefined>>): HookSettings {
  const hsmUrls = (env.MANAGED_HSM_URLS ?? "")
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s.length > 0);
  if (hsmUrls.length === 0) {
    throw new Error(
      "MANAGED_HSM_URLS is empty: set it (azd env set MANAGED_HSM_URLS https://<name>.managedhsm.azure.net) and run azd provision",
    );
  }
  const principalId = env.FUNCTION_IDENTITY_PRINCIPAL_ID?.trim() ?? "";
  if (!GUID.test(principalId)) {
    throw new Error(
      `FUNCTION_IDENTITY_PRINCIPAL_ID "${principalId}" is not a GUID: it is an output of infra/main.bicep; run azd provision first`,
    );
  }
  const restore = (env.RESTORE_ENABLED ?? "true").trim().toLowerCase();
  if (restore !== "true" && restore !== "false")
    throw new Error(`RESTORE_ENABLED "${env.RESTORE_ENABLED}" is not true or false`);
  const operatorPrincipalIds = (env.OPERATOR_PRINCIPAL_IDS ?? "")
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s.length > 0);
  const malformed = operatorPrincipalIds.find((id) => !GUID.test(id));
  if (malformed !== undefined) {
    throw new Error(
      `OPERATOR_PRINCIPAL_IDS lists "${malformed}", which is not a GUID: list object ids (az ad user show --id <upn> --query id), comma-separated`,
    );
  }
  const tenantId = env.AZURE_TENANT_ID?.trim();
  return {
    hsmUrls,
    principalId,
    restoreEnabled: restore === "true",
    operatorPrincipalIds,
    ...(tenantId ? { tenantId } : {}),
  };
}

/**
 * The hook itself: reads azd's environment, signs in as the user azd (or the Azure CLI, or whatever
 * DefaultAzureCredential finds) is signed in as, and grants the roles.
 */
export async function runHook(
  env: Readonly<Record<string, string | undefined>>,
  log: (line: string) => void = console.log,
): Promise<GrantResult[]> {
  const settings = readHookSettings(env);
  const credential = await azdHookCredential(settings.tenantId);
  // Only a local emulator can be reached this way; parseHsmUrl refuses it for anything else.
  const loopback = settings.hsmUrls.every((u) => URL.canParse(u) && isLoopback(new URL(u).hostname));
  const operators = settings.operatorPrincipalIds;
  log(
    `Granting Managed HSM Backup${settings.restoreEnabled ? " and Managed HSM Restore" : ""} to ${settings.principalId}` +
      `${operators.length > 0 ? ` and operator(s) ${operators.join(", ")}` : ""} on ${settings.hsmUrls.length} HSM(s)`,
  );
  return grantHsmRoles({
    hsmUrls: settings.hsmUrls,
    principalId: settings.principalId,
    operatorPrincipalIds: operators,
    restoreEnabled: settings.restoreEnabled,
    credential,
    disableChallengeResourceVerification: loopback,
    log,
  });
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  runHook(process.env).catch((error: unknown) => {
    console.error(`grant-hsm-roles: ${error instanceof Error ? error.message : String(error)}`);
    process.exitCode = 1;
  });
}
