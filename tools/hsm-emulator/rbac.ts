import { HsmHttpError, badRequest, notFound } from "./errors.js";

/** Built-in Managed HSM local role ids (MicrosoftDocs azure-security-docs, managed-hsm/built-in-roles.md). */
export const HSM_ROLES = {
  administrator: "a290e904-7015-4bba-90c8-60543313cdb4",
  backup: "7b127d3c-77bd-4e3e-bbe0-dbb8971fa7f8",
  restore: "6efe6056-5259-49d2-8b3d-d3d73544b20b",
  policyAdministrator: "4bd23610-cdcf-4971-bdee-bdc562cc28e4",
  cryptoOfficer: "515eb02d-2335-4d2d-92f2-b1cbdf9c3778",
  cryptoUser: "21dbd100-6940-42c2-9190-5d6cb909625b",
  cryptoAuditor: "2c18b078-7c48-4d3a-af88-5a3a1b3f82b3",
  cryptoServiceEncryptionUser: "33413926-3206-4cdd-b39a-83574fe37a17",
} as const;

/** The data actions the emulator checks (prefix `Microsoft.KeyVault/managedHsm/` omitted). */
export type HsmDataAction =
  | "backup/start/action"
  | "backup/status/action"
  | "restore/start/action"
  | "restore/status/action"
  | "roleAssignments/read/action"
  | "roleAssignments/write/action"
  | "roleAssignments/delete/action"
  | "roleDefinitions/read/action";

export const DATA_ACTION_PREFIX = "Microsoft.KeyVault/managedHsm/";
const ROLE_DEFINITION_PREFIX = "Microsoft.KeyVault/providers/Microsoft.Authorization/roleDefinitions/";
const GUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

interface BuiltInRole {
  readonly id: string;
  readonly roleName: string;
  readonly dataActions: readonly HsmDataAction[];
}

/**
 * Only the backup/restore and role-management actions of each role: those are the ones the emulator
 * enforces (the keys API is not RBAC-checked). Source: the "Permitted operations" table of the
 * built-in roles page; Restore role from the facts document §8.
 */
const BUILT_IN_ROLES: readonly BuiltInRole[] = [
  {
    id: HSM_ROLES.administrator,
    roleName: "Managed HSM Administrator",
    dataActions: [
      "backup/start/action",
      "backup/status/action",
      "restore/start/action",
      "restore/status/action",
      "roleAssignments/read/action",
      "roleAssignments/write/action",
      "roleAssignments/delete/action",
      "roleDefinitions/read/action",
    ],
  },
  {
    id: HSM_ROLES.backup,
    roleName: "Managed HSM Backup",
    dataActions: ["backup/start/action", "backup/status/action"],
  },
  {
    id: HSM_ROLES.restore,
    roleName: "Managed HSM Restore",
    dataActions: ["restore/start/action", "restore/status/action"],
  },
  {
    id: HSM_ROLES.policyAdministrator,
    roleName: "Managed HSM Policy Administrator",
    dataActions: [
      "roleAssignments/read/action",
      "roleAssignments/write/action",
      "roleAssignments/delete/action",
      "roleDefinitions/read/action",
    ],
  },
  {
    id: HSM_ROLES.cryptoOfficer,
    roleName: "Managed HSM Crypto Officer",
    dataActions: [
      "roleAssignments/read/action",
      "roleAssignments/write/action",
      "roleAssignments/delete/action",
      "roleDefinitions/read/action",
    ],
  },
  {
    id: HSM_ROLES.cryptoUser,
    roleName: "Managed HSM Crypto User",
    dataActions: ["roleAssignments/read/action", "roleDefinitions/read/action"],
  },
  {
    id: HSM_ROLES.cryptoAuditor,
    roleName: "Managed HSM Crypto Auditor",
    dataActions: ["roleAssignments/read/action", "roleDefinitions/read/action"],
  },
  {
    id: HSM_ROLES.cryptoServiceEncryptionUser,
    roleName: "Managed HSM Crypto Service Encryption User",
    dataActions: [],
  },
];

export interface RoleAssignment {
  id: string;
  name: string;
  type: "Microsoft.Authorization/roleAssignments";
  properties: { scope: string; roleDefinitionId: string; principalId: string };
}

export interface RoleDefinition {
  id: string;
  name: string;
  type: "Microsoft.Authorization/roleDefinitions";
  properties: {
    roleName: string;
    description: string;
    type: "AKVBuiltInRole";
    permissions: { actions: string[]; notActions: string[]; dataActions: string[]; notDataActions: string[] }[];
    assignableScopes: string[];
  };
}

/** Managed HSM local RBAC knows HSM-wide scopes `/` and `/keys`, and per-key `/keys/<name>`. */
export function parseScope(segments: readonly string[]): string {
  const scope = "/" + segments.join("/");
  if (scope === "/" || scope === "/keys" || /^\/keys\/[0-9a-zA-Z-]{1,127}$/.test(scope)) return scope;
  throw badRequest(`Invalid role scope '${scope}': use '/', '/keys' or '/keys/<key name>'.`, "BadParameter");
}

/** Accepts the service's form, the Terraform form with a leading `/`, or a bare GUID; returns the service's form. */
export function normalizeRoleDefinitionId(value: string): string {
  const guid = value.replace(/^\/?Microsoft\.KeyVault\/providers\/Microsoft\.Authorization\/roleDefinitions\//i, "");
  if (!GUID.test(guid)) {
    throw badRequest(
      `properties.roleDefinitionId '${value}' is invalid: expected '${ROLE_DEFINITION_PREFIX}<guid>'.`,
      "BadParameter",
    );
  }
  return ROLE_DEFINITION_PREFIX + guid.toLowerCase();
}

export function roleDefinitions(scope: string): RoleDefinition[] {
  return BUILT_IN_ROLES.map((role) => roleDefinition(role, scope));
}

export function findRoleDefinition(scope: string, name: string): RoleDefinition {
  const role = BUILT_IN_ROLES.find((candidate) => candidate.id === name.toLowerCase());
  if (!role) throw notFound("RoleDefinitionNotFound", `Requested role definition not found: ${name}`);
  return roleDefinition(role, scope);
}

function roleDefinition(role: BuiltInRole, scope: string): RoleDefinition {
  return {
    id: ROLE_DEFINITION_PREFIX + role.id,
    name: role.id,
    type: "Microsoft.Authorization/roleDefinitions",
    properties: {
      roleName: role.roleName,
      description: "",
      type: "AKVBuiltInRole",
      permissions: [
        {
          actions: [],
          notActions: [],
          dataActions: role.dataActions.map((action) => DATA_ACTION_PREFIX + action),
          notDataActions: [],
        },
      ],
      assignableScopes: [scope],
    },
  };
}

function assignmentId(scope: string, name: string): string {
  return `${scope === "/" ? "" : scope}/providers/Microsoft.Authorization/roleAssignments/${name}`;
}

/** Role assignments of the HSM, keyed by assignment name (a GUID, unique across scopes). */
export class RoleStore {
  private readonly assignments = new Map<string, RoleAssignment>();

  /**
   * Creates an assignment. Re-sending the same name with the same content is idempotent and answers
   * 201 again: the JS SDK's createRoleAssignment accepts only 201. The same name with different
   * content is refused like ARM does (RoleAssignmentUpdateNotPermitted): assignments are immutable.
   * A second name for the same principal/role/scope is allowed: no HSM source says it is refused.
   */
  put(scope: string, name: string, roleDefinitionId: string, principalId: string): RoleAssignment {
    if (!GUID.test(name))
      throw badRequest(`Role assignment name '${name}' is invalid: it must be a GUID.`, "BadParameter");
    if (!principalId.trim()) throw badRequest("properties.principalId must be a non-empty string.", "BadParameter");
    const wanted: RoleAssignment = {
      id: assignmentId(scope, name),
      name,
      type: "Microsoft.Authorization/roleAssignments",
      properties: { scope, roleDefinitionId: normalizeRoleDefinitionId(roleDefinitionId), principalId },
    };
    const existing = this.assignments.get(name);
    if (existing) {
      const same =
        existing.properties.scope === wanted.properties.scope &&
        existing.properties.roleDefinitionId === wanted.properties.roleDefinitionId &&
        existing.properties.principalId === wanted.properties.principalId;
      if (!same) {
        throw new HsmHttpError(
          409,
          "RoleAssignmentUpdateNotPermitted",
          `Role assignment ${name} already exists with scope ${existing.properties.scope}, role ${existing.properties.roleDefinitionId} and principal ${existing.properties.principalId}; role assignments cannot be updated, delete it first.`,
        );
      }
      return structuredClone(existing);
    }
    this.assignments.set(name, wanted);
    return structuredClone(wanted);
  }

  get(name: string): RoleAssignment {
    const found = this.assignments.get(name);
    if (!found) throw notFound("RoleAssignmentNotFound", `Requested role assignment not found: ${name}`);
    return structuredClone(found);
  }

  delete(name: string): RoleAssignment {
    const found = this.get(name);
    this.assignments.delete(name);
    return found;
  }

  /** Listing at `/` shows every assignment; at a narrower scope only that scope's. */
  list(scope = "/"): RoleAssignment[] {
    return structuredClone([...this.assignments.values()].filter((a) => scope === "/" || a.properties.scope === scope));
  }

  snapshot(): RoleAssignment[] {
    return this.list("/");
  }

  /** Full restore replaces the role assignments with the backup's, as the real service does. */
  replaceAll(assignments: readonly RoleAssignment[]): void {
    this.assignments.clear();
    for (const assignment of structuredClone(assignments)) this.assignments.set(assignment.name, assignment);
  }

  /**
   * Backup/restore and role management are HSM-wide actions, so only assignments at scope `/` grant
   * them; an assignment at `/keys` covers key operations only.
   */
  isAllowed(principalId: string | undefined, action: HsmDataAction): boolean {
    if (!principalId) return false;
    return [...this.assignments.values()].some((assignment) => {
      if (assignment.properties.principalId !== principalId || assignment.properties.scope !== "/") return false;
      const roleId = assignment.properties.roleDefinitionId.slice(ROLE_DEFINITION_PREFIX.length);
      return BUILT_IN_ROLES.some((role) => role.id === roleId && role.dataActions.includes(action));
    });
  }
}
