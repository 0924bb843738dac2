import { readFileSync } from "node:fs";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { HSM_API_VERSIONS, SETTINGS, parseConfig } from "../../src/lib/config.js";
import {
  CONTEXT,
  Evaluator,
  ROOT,
  RuntimeValue,
  compile,
  moduleNamed,
  moduleParameterExpression,
  modules,
  parameterReferences,
  resourcesOfType,
  type Json,
  type Template,
} from "./arm.js";

/** App settings the code reads that do not apply in Azure, and why. */
const NOT_IN_AZURE: Record<string, string> = {
  BackupStorage:
    "a storage connection string, for local development (Azurite); Azure uses the identity-based BackupStorage__* form",
};

const PLATFORM_SETTINGS = Object.keys(
  (
    JSON.parse(readFileSync(join(ROOT, "infra", "app", "platform-settings.json"), "utf8")) as {
      settings: Record<string, string>;
    }
  ).settings,
);

const RG = `/subscriptions/${CONTEXT.subscriptionId}/resourceGroups/${CONTEXT.resourceGroup}/providers`;

let main: Template;
let diagnostics: string;

beforeAll(() => {
  ({ template: main, diagnostics } = compile("infra/main.bicep"));
}, 180_000);

describe("infra/main.bicep", () => {
  it("compiles with no warning", () => {
    expect(diagnostics.split("\n").filter((line) => /: (Warning|Error) /.test(line))).toEqual([]);
  });

  it("deploys at subscription scope, with every module inline (local modules only)", () => {
    expect((main as unknown as { $schema: string }).$schema).toContain("subscriptionDeploymentTemplate.json");
    expect(
      modules(main)
        .map((m) => m.name)
        .sort(),
    ).toEqual(
      [
        "alerts",
        "app-identity",
        "backup-storage",
        "function-app",
        "host-storage",
        "hsm-backup-identity",
        "monitoring",
        "rbac",
        "vault-storage",
        "workbook",
        "[format('hsm-audit-{0}-{1}', variables('resourceToken'), copyIndex())]",
      ].sort(),
    );
    const source = readFileSync(join(ROOT, "infra", "main.bicep"), "utf8");
    expect(source).not.toMatch(/br[/:]/);
  });

  it("has a main.parameters.json entry for every parameter without a default, and none for unknown ones", () => {
    const file = JSON.parse(readFileSync(join(ROOT, "infra", "main.parameters.json"), "utf8")) as {
      parameters: Record<string, unknown>;
    };
    const declared = main.parameters ?? {};
    const required = Object.entries(declared)
      .filter(([, p]) => p.defaultValue === undefined)
      .map(([name]) => name);
    expect(Object.keys(file.parameters).filter((name) => !(name in declared))).toEqual([]);
    expect(required.filter((name) => !(name in file.parameters))).toEqual([]);
  });

  it("defaults every app setting it sets to the app's own default (src/lib/config.ts)", () => {
    const defaults = parseConfig({
      MANAGED_HSM_URLS: "https://contoso.managedhsm.azure.net",
      BackupStorage: "UseDevelopmentStorage=true",
    });
    const evaluator = new Evaluator(main, {
      environmentName: "test",
      location: "westeurope",
      managedHsmUrls: "https://contoso.managedhsm.azure.net",
    });
    const p = (name: string) => evaluator.expression(`parameters('${name}')`);
    expect(p("backupContainerName")).toBe(defaults.backupContainer);
    expect(p("catalogTableName")).toBe(defaults.catalogTable);
    expect(p("backupSchedule")).toBe(defaults.backupSchedule);
    expect(p("sasTtlMinutes")).toBe(defaults.sasTtlMinutes);
    expect(p("hsmApiVersion")).toBe(defaults.hsmApiVersion);
    expect(p("hsmStorageAuth")).toBe(defaults.hsmStorageAuth);
    expect(p("restoreEnabled")).toBe(defaults.restoreEnabled);
    expect(p("preflight")).toBe(defaults.preflight);
    expect(p("healthMaxAgeHours")).toBe(defaults.healthMaxAgeHours);
    expect(p("healthGraceHours")).toBe(defaults.healthGraceHours);
    expect(main.parameters?.hsmApiVersion?.allowedValues).toEqual([...HSM_API_VERSIONS]);
    // Immutable copies are off unless backupImmutabilityDays says otherwise, as in the app.
    expect(defaults.backupCopy).toBeUndefined();
    expect(evaluator.variable("backupCopyContainerName")).toBe("");
  });

  it("starts the health grace at this deployment's time unless DEPLOYED_AT pins it, for the app and the alert alike", () => {
    const required = {
      environmentName: "test",
      location: "westeurope",
      managedHsmUrls: "https://contoso.managedhsm.azure.net",
    };
    const given = (parameters: Record<string, unknown>) => {
      const evaluator = new Evaluator(main, { ...required, ...parameters });
      const passed = (module: string, parameter: string) =>
        evaluator.value(moduleParameterExpression(moduleNamed(main, module), parameter));
      return { deployedAt: passed("function-app", "deployedAt"), graceEndsEpoch: passed("alerts", "graceEndsEpoch") };
    };
    const now = Date.parse(CONTEXT.deploymentTime.replace(" ", "T"));
    expect(given({})).toEqual({ deployedAt: "2026-12-01T03:00:00Z", graceEndsEpoch: now / 1000 + 26 * 3600 });
    expect(given({ deployedAt: "2026-11-20T08:30:00Z", healthGraceHours: 2 })).toEqual({
      deployedAt: "2026-11-20T08:30:00Z",
      graceEndsEpoch: Date.parse("2026-11-20T08:30:00Z") / 1000 + 2 * 3600,
    });
    // What the app is given, it can read: grace from the same moment the alert counts from.
    expect(
      parseConfig({
        MANAGED_HSM_URLS: required.managedHsmUrls,
        BackupStorage: "UseDevelopmentStorage=true",
        DEPLOYED_AT: String(given({}).deployedAt),
      }).deployedAt,
    ).toEqual(new Date(now));
  });

  it("refuses SAS mode with public network access off, before creating anything", () => {
    const evaluator = new Evaluator(main, {
      environmentName: "test",
      location: "westeurope",
      managedHsmUrls: "https://contoso.managedhsm.azure.net",
      hsmStorageAuth: "sas",
      backupStoragePublicNetworkAccess: "Disabled",
    });
    expect(() => evaluator.variable("backupPublicNetworkAccess")).toThrow(/needs hsmStorageAuth "managedIdentity"/);
  });
});

describe("the function app", () => {
  const appParameters = {
    location: "westeurope",
    tags: {},
    name: "func-test",
    planName: "plan-test",
    azdServiceName: "api",
    identityId: `${RG}/Microsoft.ManagedIdentity/userAssignedIdentities/id-app`,
    identityClientId: "22222222-2222-2222-2222-222222222222",
    hostStorageName: "sthost",
    hostBlobEndpoint: "https://sthost.blob.core.windows.net/",
    deploymentContainerName: "app-package",
    applicationInsightsConnectionString: "InstrumentationKey=00000000-0000-0000-0000-000000000000",
    managedHsmUrls: "https://contoso.managedhsm.azure.net,https://fabrikam.managedhsm.azure.net",
    backupBlobServiceUri: "https://stbak.blob.core.windows.net/",
    backupTableServiceUri: "https://stbak.table.core.windows.net/",
    backupContainer: "mhsm-backups",
    catalogTable: "hsmbackups",
    backupSchedule: "0 0 2 * * *",
    sasTtlMinutes: 120,
    hsmApiVersion: "7.6",
    hsmStorageAuth: "sas",
    restoreEnabled: true,
    healthMaxAgeHours: 26,
    healthGraceHours: 26,
    deployedAt: "2026-12-01T03:00:00Z",
    hsmRequestTimeoutSeconds: 30,
    maxPollIntervalSeconds: 60,
    jobTimeoutMinutes: 120,
    reconcileSchedule: "0 */15 * * * *",
    backupConcurrency: 8,
    backupCopyContainer: "",
    backupCopyBlobServiceUri: "",
    preflight: true,
    retentionDays: 30,
    retentionMinKeep: 7,
    pruneSchedule: "0 30 3 * * *",
  };

  function appSettings(overrides: Record<string, unknown> = {}): Record<string, string> {
    const app = moduleNamed(main, "function-app").template;
    const config = app.resources.filter((r) => r.type === "Microsoft.Web/sites/config");
    expect(config).toHaveLength(1);
    const [instance] = new Evaluator(app, { ...appParameters, ...overrides }).instances(config[0]!);
    expect(instance!.name).toBe("func-test/appsettings");
    return instance!.properties as Record<string, string>;
  }

  it("sets exactly the app's settings that apply in Azure plus the platform settings, no more, no fewer", () => {
    const expected = [...SETTINGS.filter((s) => !(s in NOT_IN_AZURE)), ...PLATFORM_SETTINGS].sort();
    expect(Object.keys(appSettings()).sort()).toEqual(expected);
    expect(PLATFORM_SETTINGS.filter((s) => (SETTINGS as readonly string[]).includes(s))).toEqual([]);
    expect(Object.keys(NOT_IN_AZURE).filter((s) => !(SETTINGS as readonly string[]).includes(s))).toEqual([]);
  });

  it("writes values the app's own parseConfig accepts, naming the user-assigned identity for every identity connection", () => {
    const settings = appSettings();
    const config = parseConfig(settings);
    expect(config.storage).toEqual({
      kind: "identity",
      blobServiceUri: "https://stbak.blob.core.windows.net",
      tableServiceUri: "https://stbak.table.core.windows.net",
      clientId: appParameters.identityClientId,
    });
    expect(config.hsms.map((h) => h.name)).toEqual(["contoso", "fabrikam"]);
    expect(config.restoreEnabled).toBe(true);
    expect(config.backupCopy).toBeUndefined();
    expect(
      parseConfig(
        appSettings({
          backupCopyContainer: "mhsm-backup-copies",
          backupCopyBlobServiceUri: "https://stvault.blob.core.windows.net/",
        }),
      ).backupCopy,
    ).toEqual({ container: "mhsm-backup-copies", blobServiceUri: "https://stvault.blob.core.windows.net" });
    expect(parseConfig(appSettings({ restoreEnabled: false, hsmStorageAuth: "managedIdentity" }))).toMatchObject({
      restoreEnabled: false,
      hsmStorageAuth: "managedIdentity",
    });
    expect(settings).toMatchObject({
      AzureWebJobsStorage__accountName: "sthost",
      AzureWebJobsStorage__credential: "managedidentity",
      AzureWebJobsStorage__clientId: appParameters.identityClientId,
      APPLICATIONINSIGHTS_CONNECTION_STRING: appParameters.applicationInsightsConnectionString,
      APPLICATIONINSIGHTS_AUTHENTICATION_STRING: `ClientId=${appParameters.identityClientId};Authorization=AAD`,
      SAS_TTL_MINUTES: "120",
      HEALTH_MAX_AGE_HOURS: "26",
    });
  });

  it("runs Node 22 on a Flex Consumption (FC1) plan, with the user-assigned identity for its package too", () => {
    const app = moduleNamed(main, "function-app").template;
    const evaluator = new Evaluator(app, appParameters);
    const [plan] = evaluator.instances(app.resources.find((r) => r.type === "Microsoft.Web/serverfarms")!);
    expect(plan!.resource.sku).toEqual({ name: "FC1", tier: "FlexConsumption" });
    expect(plan!.properties.reserved).toBe(true);
    const [site] = evaluator.instances(app.resources.find((r) => r.type === "Microsoft.Web/sites")!);
    expect(site!.resource.kind).toBe("functionapp,linux");
    expect(site!.resource.identity).toEqual({
      type: "UserAssigned",
      userAssignedIdentities: { [appParameters.identityId]: {} },
    });
    expect(site!.resource.tags).toMatchObject({ "azd-service-name": "api" });
    expect(site!.properties.httpsOnly).toBe(true);
    const functionAppConfig = site!.properties.functionAppConfig as Record<string, Record<string, unknown>>;
    expect(functionAppConfig.runtime).toEqual({ name: "node", version: "22" });
    expect(functionAppConfig.deployment).toEqual({
      storage: {
        type: "blobContainer",
        value: "https://sthost.blob.core.windows.net/app-package",
        authentication: { type: "UserAssignedIdentity", userAssignedIdentityResourceId: appParameters.identityId },
      },
    });
  });

  it("gets its identity's client id, the storage endpoints and names from the modules that create them", () => {
    const app = moduleNamed(main, "function-app");
    const fromOutput = (parameter: string, module: string, output: string) => {
      const expression = String(moduleParameterExpression(app, parameter));
      expect(expression, parameter).toContain(`'Microsoft.Resources/deployments', '${module}')`);
      expect(expression, parameter).toMatch(new RegExp(`\\.outputs\\.${output}\\.value\\]$`));
    };
    fromOutput("identityId", "app-identity", "id");
    fromOutput("identityClientId", "app-identity", "clientId");
    fromOutput("hostStorageName", "host-storage", "name");
    fromOutput("hostBlobEndpoint", "host-storage", "blobEndpoint");
    fromOutput("backupBlobServiceUri", "backup-storage", "blobEndpoint");
    fromOutput("backupTableServiceUri", "backup-storage", "tableEndpoint");
    fromOutput("applicationInsightsConnectionString", "monitoring", "connectionString");
  });
});

describe("storage", () => {
  function account(moduleName: string, parameters: Record<string, unknown>) {
    const module = moduleNamed(main, moduleName).template;
    const evaluator = new Evaluator(module, { location: "westeurope", tags: {}, ...parameters });
    const byType = (type: string) =>
      module.resources.filter((r) => r.type === type).flatMap((r) => evaluator.instances(r));
    return { module, byType };
  }

  it("host storage: Entra ID only (allowSharedKeyAccess false), TLS 1.2, private blobs", () => {
    const { byType } = account("host-storage", { name: "sthost", deploymentContainerName: "app-package" });
    const [storage] = byType("Microsoft.Storage/storageAccounts");
    expect(storage!.properties).toMatchObject({
      allowSharedKeyAccess: false,
      allowBlobPublicAccess: false,
      minimumTlsVersion: "TLS1_2",
      supportsHttpsTrafficOnly: true,
    });
    expect(byType("Microsoft.Storage/storageAccounts/blobServices/containers").map((c) => c.name)).toEqual([
      "sthost/default/app-package",
    ]);
  });

  const backupParameters = {
    name: "stbak",
    skuName: "Standard_GRS",
    containerName: "mhsm-backups",
    tableName: "hsmbackups",
    softDeleteRetentionDays: 30,
    versionRetentionDays: 60,
    publicNetworkAccess: "Enabled",
    lock: true,
  };

  it("backup storage: soft delete for blobs and containers, versioning, no immutability, TLS 1.2, the container and the table", () => {
    const { module, byType } = account("backup-storage", backupParameters);
    const [storage] = byType("Microsoft.Storage/storageAccounts");
    expect(storage!.properties).toMatchObject({
      allowSharedKeyAccess: false,
      allowBlobPublicAccess: false,
      minimumTlsVersion: "TLS1_2",
      publicNetworkAccess: "Enabled",
      networkAcls: { defaultAction: "Allow", bypass: "AzureServices" },
    });
    const [blob] = byType("Microsoft.Storage/storageAccounts/blobServices");
    expect(blob!.properties).toEqual({
      isVersioningEnabled: true,
      deleteRetentionPolicy: { enabled: true, days: 30 },
      containerDeleteRetentionPolicy: { enabled: true, days: 30 },
    });
    expect(byType("Microsoft.Storage/storageAccounts/blobServices/containers").map((c) => c.name)).toEqual([
      "stbak/default/mhsm-backups",
    ]);
    expect(byType("Microsoft.Storage/storageAccounts/tableServices/tables").map((c) => c.name)).toEqual([
      "stbak/default/hsmbackups",
    ]);
    // Managed HSM does not support a backup target with an immutability policy.
    expect(JSON.stringify(module)).not.toMatch(/immutab/i);
    expect(byType("Microsoft.Authorization/locks").map((l) => l.properties.level)).toEqual(["CanNotDelete"]);
  });

  it("backup storage: the versions prune's deletes leave are removed after RETENTION_DAYS + soft delete, current blobs never", () => {
    const { byType } = account("backup-storage", backupParameters);
    const [policy] = byType("Microsoft.Storage/storageAccounts/managementPolicies");
    const rules = (policy!.properties as { policy: { rules: { definition: unknown }[] } }).policy.rules;
    expect(rules.map((r) => r.definition)).toEqual([
      {
        filters: { blobTypes: ["blockBlob"], prefixMatch: ["mhsm-backups/"] },
        actions: { version: { delete: { daysAfterCreationGreaterThan: 60 } } },
      },
    ]);
    const passed = moduleNamed(main, "backup-storage").resource.properties!.parameters as Record<
      string,
      { value: Json }
    >;
    expect(passed.versionRetentionDays!.value).toBe(
      "[add(parameters('retentionDays'), parameters('softDeleteRetentionDays'))]",
    );
  });

  it("backup storage with public network access off: deny by default, trusted services (the HSM) bypass", () => {
    const { byType } = account("backup-storage", { ...backupParameters, publicNetworkAccess: "Disabled", lock: false });
    const [storage] = byType("Microsoft.Storage/storageAccounts");
    expect(storage!.properties).toMatchObject({
      publicNetworkAccess: "Disabled",
      networkAcls: { defaultAction: "Deny", bypass: "AzureServices" },
    });
    expect(byType("Microsoft.Authorization/locks")).toEqual([]);
  });
});

describe("immutable copies (backupImmutabilityDays)", () => {
  const required = {
    environmentName: "test",
    location: "westeurope",
    managedHsmUrls: "https://contoso.managedhsm.azure.net",
  };

  function deployment(parameters: Record<string, unknown> = {}) {
    const evaluator = new Evaluator(main, { ...required, ...parameters });
    const vault = moduleNamed(main, "vault-storage");
    const app = moduleNamed(main, "function-app");
    // A parameter that depends on a conditional module is passed as if(..., {value}, {value}) whole.
    const appParameter = (name: string) => {
      const raw = (app.resource.properties?.parameters as Record<string, Json>)[name];
      const entry = (typeof raw === "string" ? evaluator.value(raw) : raw) as { value: Json };
      return evaluator.value(entry.value);
    };
    return { evaluator, vault, deployed: evaluator.value(vault.resource.condition!) === true, appParameter };
  }

  function vaultAccount(parameters: Record<string, unknown>) {
    const { evaluator, vault } = deployment(parameters);
    const passed = Object.fromEntries(
      Object.keys(vault.template.parameters ?? {}).map((name) => [
        name,
        evaluator.value(moduleParameterExpression(vault, name) as string),
      ]),
    );
    const inner = new Evaluator(vault.template, passed);
    const byType = (type: string) =>
      vault.template.resources.filter((r) => r.type === type).flatMap((r) => inner.instances(r));
    return { passed, byType };
  }

  it("0 (default): no vault account, and the app's copy settings are empty (copies off)", () => {
    const { deployed, appParameter } = deployment();
    expect(deployed).toBe(false);
    expect(appParameter("backupCopyContainer")).toBe("");
    expect(appParameter("backupCopyBlobServiceUri")).toBe("");
    expect(deployment({ backupImmutabilityDays: 0 }).deployed).toBe(false);
  });

  it("N > 0: a vault account with version-level immutability of N days (Unlocked unless asked), Entra ID only, versioning, the copy container, copies deleted once expired", () => {
    const { deployed, appParameter } = deployment({ backupImmutabilityDays: 30 });
    expect(deployed).toBe(true);
    expect(appParameter("backupCopyContainer")).toBe("mhsm-backup-copies");
    expect(String(appParameter("backupCopyBlobServiceUri"))).toMatch(/vault-storage.*\.outputs\.blobEndpoint/);

    const { passed, byType } = vaultAccount({ backupImmutabilityDays: 30 });
    expect(passed.name).toMatch(/^stvault[a-z0-9]{13}$/);
    const [storage] = byType("Microsoft.Storage/storageAccounts");
    expect(storage!.properties).toMatchObject({
      allowSharedKeyAccess: false,
      allowBlobPublicAccess: false,
      minimumTlsVersion: "TLS1_2",
      immutableStorageWithVersioning: {
        enabled: true,
        immutabilityPolicy: {
          immutabilityPeriodSinceCreationInDays: 30,
          state: "Unlocked",
          allowProtectedAppendWrites: false,
        },
      },
    });
    expect(byType("Microsoft.Storage/storageAccounts/blobServices")[0]!.properties).toMatchObject({
      isVersioningEnabled: true,
    });
    expect(byType("Microsoft.Storage/storageAccounts/blobServices/containers").map((c) => c.name)).toEqual([
      `${String(passed.name)}/default/mhsm-backup-copies`,
    ]);
    const [lifecycle] = byType("Microsoft.Storage/storageAccounts/managementPolicies");
    const rule = (lifecycle!.properties as any).policy.rules[0];
    expect(rule.definition.filters.prefixMatch).toEqual(["mhsm-backup-copies/"]);
    expect(rule.definition.actions).toEqual({
      baseBlob: { delete: { daysAfterCreationGreaterThan: 30 } },
      version: { delete: { daysAfterCreationGreaterThan: 30 } },
    });
    expect(byType("Microsoft.Authorization/locks").map((l) => l.properties.level)).toEqual(["CanNotDelete"]);

    const locked = vaultAccount({ backupImmutabilityDays: 7, backupImmutabilityLocked: true });
    expect(locked.byType("Microsoft.Storage/storageAccounts")[0]!.properties).toMatchObject({
      immutableStorageWithVersioning: {
        immutabilityPolicy: { immutabilityPeriodSinceCreationInDays: 7, state: "Locked" },
      },
    });
  });

  it("the vault has the backup account's network access, redundancy and lock setting", () => {
    const vault = moduleNamed(main, "vault-storage");
    const backup = moduleNamed(main, "backup-storage");
    for (const [mine, theirs] of [
      ["publicNetworkAccess", "publicNetworkAccess"],
      ["skuName", "skuName"],
      ["lock", "lock"],
    ] as const)
      expect(moduleParameterExpression(vault, mine), mine).toEqual(moduleParameterExpression(backup, theirs));
    const disabled = vaultAccount({
      backupImmutabilityDays: 30,
      hsmStorageAuth: "managedIdentity",
      backupStoragePublicNetworkAccess: "Disabled",
    });
    expect(disabled.byType("Microsoft.Storage/storageAccounts")[0]!.properties).toMatchObject({
      publicNetworkAccess: "Disabled",
      networkAcls: { defaultAction: "Deny" },
    });
  });
});

describe("role assignments", () => {
  const ROLES = {
    "b7e6dc6d-f1e8-4753-8033-0f276bb0955b": "Storage Blob Data Owner",
    "ba92f5b4-2d11-453d-a403-e96b0029c9fe": "Storage Blob Data Contributor",
    "db58b8e5-c6ad-4a2a-8342-4190687cbf4a": "Storage Blob Delegator",
    "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3": "Storage Table Data Contributor",
    "3913510d-42f4-4e42-8a64-420c390055eb": "Monitoring Metrics Publisher",
  } as const;
  const HOST = `${RG}/Microsoft.Storage/storageAccounts/sthost`;
  const BACKUP = `${RG}/Microsoft.Storage/storageAccounts/stbak`;
  const CONTAINER = `${BACKUP}/blobServices/default/containers/mhsm-backups`;
  const TABLE = `${BACKUP}/tableServices/default/tables/hsmbackups`;
  const INSIGHTS = `${RG}/Microsoft.Insights/components/appi`;

  function assignments(hsmStorageAuth: "sas" | "managedIdentity", extra: Record<string, unknown> = {}): string[] {
    const rbac = moduleNamed(main, "rbac").template;
    const evaluator = new Evaluator(rbac, {
      ...extra,
      appIdentityName: "id-app",
      hsmBackupIdentityName: hsmStorageAuth === "managedIdentity" ? "id-hsm" : "",
      hsmStorageAuth,
      hostStorageName: "sthost",
      backupStorageName: "stbak",
      backupContainerName: "mhsm-backups",
      catalogTableName: "hsmbackups",
      applicationInsightsName: "appi",
    });
    return rbac.resources
      .filter((r) => r.type === "Microsoft.Authorization/roleAssignments")
      .flatMap((r) => evaluator.instances(r))
      .map(({ resource, properties }) => {
        const roleId = String(properties.roleDefinitionId).split("/").pop()!;
        const role = ROLES[roleId as keyof typeof ROLES] ?? `unexpected role ${roleId}`;
        expect(String(properties.roleDefinitionId)).toBe(
          `/subscriptions/${CONTEXT.subscriptionId}/providers/Microsoft.Authorization/roleDefinitions/${roleId}`,
        );
        const principal = properties.principalId;
        expect(principal).toBeInstanceOf(RuntimeValue);
        const who =
          /userAssignedIdentities\/(id-app|id-hsm)\)\.principalId$/.exec((principal as RuntimeValue).path)?.[1] ??
          `unexpected principal ${String(principal)}`;
        expect(properties.principalType).toBe("ServicePrincipal");
        return `${role} @ ${String(resource.scope)} -> ${who}`;
      })
      .sort();
  }

  it("SAS mode: the app may sign delegation keys for the account, write the backup container, use the catalog table and publish telemetry; nothing broader", () => {
    expect(assignments("sas")).toEqual(
      [
        `Storage Blob Data Owner @ ${HOST} -> id-app`,
        `Storage Blob Delegator @ ${BACKUP} -> id-app`,
        `Storage Blob Data Contributor @ ${CONTAINER} -> id-app`,
        `Storage Table Data Contributor @ ${TABLE} -> id-app`,
        `Monitoring Metrics Publisher @ ${INSIGHTS} -> id-app`,
      ].sort(),
    );
  });

  it("managed-identity mode: the HSM's identity gets the backup account; the app signs no SAS, so no Delegator", () => {
    expect(assignments("managedIdentity")).toEqual(
      [
        `Storage Blob Data Owner @ ${HOST} -> id-app`,
        `Storage Blob Data Contributor @ ${CONTAINER} -> id-app`,
        `Storage Table Data Contributor @ ${TABLE} -> id-app`,
        `Monitoring Metrics Publisher @ ${INSIGHTS} -> id-app`,
        `Storage Blob Data Contributor @ ${BACKUP} -> id-hsm`,
      ].sort(),
    );
  });

  it("immutable copies: the app may also write (never delete) in the vault's copy container, nothing else there", () => {
    const vault = { vaultStorageName: "stvault", vaultContainerName: "mhsm-backup-copies" };
    const VAULT_CONTAINER = `${RG}/Microsoft.Storage/storageAccounts/stvault/blobServices/default/containers/mhsm-backup-copies`;
    expect(assignments("sas", vault)).toEqual(
      [...assignments("sas"), `Storage Blob Data Contributor @ ${VAULT_CONTAINER} -> id-app`].sort(),
    );
    const onVault = rbacInstances(vault).filter(({ resource }) => String(resource.scope).includes("/stvault/"));
    expect(onVault).toHaveLength(1);
    // Copying creates blobs and reads back their size; a delete is taken away by the condition.
    expect(onVault[0]!.properties).toMatchObject({
      conditionVersion: "2.0",
      condition: "(!(ActionMatches{'Microsoft.Storage/storageAccounts/blobServices/containers/blobs/delete'}))",
    });
  });

  it("declares role assignments only in the rbac module, each named with guid()", () => {
    const all = resourcesOfType(main, "Microsoft.Authorization/roleAssignments");
    const rbac = moduleNamed(main, "rbac").template;
    expect(all.length).toBeGreaterThan(0);
    for (const { resource, template } of all) {
      expect(template).toBe(rbac);
      expect(resource.name).toMatch(/^\[guid\(/);
    }
  });

  it("are given the names of the very resources the other modules create", () => {
    const rbac = moduleNamed(main, "rbac");
    const same = (parameter: string, module: string, moduleParameter: string) =>
      expect(moduleParameterExpression(rbac, parameter), parameter).toEqual(
        moduleParameterExpression(moduleNamed(main, module), moduleParameter),
      );
    same("appIdentityName", "app-identity", "name");
    same("hsmBackupIdentityName", "hsm-backup-identity", "name");
    same("hostStorageName", "host-storage", "name");
    same("backupStorageName", "backup-storage", "name");
    same("backupContainerName", "backup-storage", "containerName");
    same("catalogTableName", "backup-storage", "tableName");
    same("applicationInsightsName", "monitoring", "applicationInsightsName");
    same("hsmStorageAuth", "function-app", "hsmStorageAuth");
    same("vaultStorageName", "vault-storage", "name");
    same("vaultContainerName", "vault-storage", "containerName");
    same("vaultContainerName", "function-app", "backupCopyContainer");
  });
});

describe("monitoring", () => {
  it("Application Insights is workspace-based with local auth off", () => {
    const monitoring = moduleNamed(main, "monitoring").template;
    const evaluator = new Evaluator(monitoring, {
      location: "westeurope",
      tags: {},
      logAnalyticsName: "log",
      applicationInsightsName: "appi",
      retentionInDays: 90,
    });
    const [component] = evaluator.instances(
      monitoring.resources.find((r) => r.type === "Microsoft.Insights/components")!,
    );
    expect(component!.properties).toMatchObject({
      DisableLocalAuth: true,
      WorkspaceResourceId: `${RG}/Microsoft.OperationalInsights/workspaces/log`,
    });
  });

  it("sends each HSM's AuditEvent logs to the workspace, from the HSM's own resource group", () => {
    const diagnostics = modules(main).find((m) => m.name.startsWith("[format('hsm-audit-"))!;
    expect(diagnostics.resource.copy).toEqual({
      name: "hsmDiagnostics",
      count: "[length(variables('hsmResourceIds'))]",
    });
    expect(String(diagnostics.resource.resourceGroup)).toContain(
      "split(variables('hsmResourceIds')[copyIndex()], '/')[4]",
    );
    expect(String(diagnostics.resource.subscriptionId)).toContain(
      "split(variables('hsmResourceIds')[copyIndex()], '/')[2]",
    );
    const evaluator = new Evaluator(diagnostics.template, {
      hsmName: "contoso",
      logAnalyticsId: "/log",
      settingName: "audit",
    });
    const [setting] = evaluator.instances(diagnostics.template.resources[0]!);
    expect(setting!.resource.scope).toBe(`${RG}/Microsoft.KeyVault/managedHSMs/contoso`);
    expect(setting!.properties).toMatchObject({
      workspaceId: "/log",
      logs: [{ category: "AuditEvent", enabled: true }],
    });
  });
});

describe("azure.yaml", () => {
  const yaml = readFileSync(join(ROOT, "azure.yaml"), "utf8");

  it("deploys the app as a TypeScript function app named like the azd-service-name tag", () => {
    expect(yaml).toMatch(/^services:\n {2}api:\n {4}project: \.\n {4}language: ts\n {4}host: function$/m);
    expect(String(moduleParameterExpression(moduleNamed(main, "function-app"), "azdServiceName"))).toBe("api");
  });

  it("takes the first backup after deploying (the app runs no code before), failing azd when it fails", () => {
    const postdeploy = yaml.slice(yaml.indexOf("  postdeploy:"));
    expect(yaml.indexOf("  postdeploy:")).toBeGreaterThan(yaml.indexOf("  postprovision:"));
    expect(postdeploy.match(/node dist\/tools\/first-backup\.js/g)).toHaveLength(2);
    for (const output of ["SERVICE_API_URI", "AZURE_FUNCTION_APP_NAME", "AZURE_RESOURCE_GROUP", "MANAGED_HSM_URLS"]) {
      expect(main.outputs, output).toHaveProperty(output);
    }
  });

  it("runs the HSM role hook after provisioning, failing azd when it fails", () => {
    expect(yaml).toMatch(/postprovision:/);
    expect(yaml.match(/node dist\/tools\/grant-hsm-roles\.js/g)).toHaveLength(2);
    expect(yaml).not.toMatch(/continueOnError: true/);
    for (const output of ["MANAGED_HSM_URLS", "FUNCTION_IDENTITY_PRINCIPAL_ID", "RESTORE_ENABLED"]) {
      expect(main.outputs, output).toHaveProperty(output);
    }
  });
});

/** App settings the function app has that the CLI must not take from the deployment, and why. */
const NOT_FOR_OPERATORS: Record<string, string> = {
  BackupStorage__clientId: "names the app's managed identity; an operator signs in as themselves",
};

/** infra/main.parameters.json: each Bicep parameter's azd environment variable and its default. */
function azdEntries(): Map<string, { name: string; fallback?: string }> {
  const file = JSON.parse(readFileSync(join(ROOT, "infra", "main.parameters.json"), "utf8")) as {
    parameters: Record<string, { value: unknown }>;
  };
  return new Map(
    Object.entries(file.parameters).map(([parameter, { value }]) => {
      const match = /^\$\{([A-Za-z_][A-Za-z0-9_]*)(?:=(.*))?\}$/s.exec(String(value));
      if (!match) throw new Error(`main.parameters.json: ${parameter} is not "\${NAME}" or "\${NAME=default}"`);
      return [parameter, match[2] === undefined ? { name: match[1]! } : { name: match[1]!, fallback: match[2] }];
    }),
  );
}

/** The function app's settings as expressions of its own template. */
function appSettingExpressions(): Record<string, Json> {
  const app = moduleNamed(main, "function-app").template;
  const [config] = app.resources.filter((r) => r.type === "Microsoft.Web/sites/config");
  return config!.properties as Record<string, Json>;
}

/** Which main.bicep parameters each app setting is made from (through the function-app module). */
function mainParametersBySetting(): Map<string, Set<string>> {
  const module = moduleNamed(main, "function-app");
  const result = new Map<string, Set<string>>();
  for (const [setting, expression] of Object.entries(appSettingExpressions())) {
    const fromMain = new Set<string>();
    for (const appParameter of parameterReferences(module.template, expression)) {
      for (const p of parameterReferences(main, moduleParameterExpression(module, appParameter))) fromMain.add(p);
    }
    result.set(setting, fromMain);
  }
  return result;
}

/** A Bicep default as azd's "${NAME=default}" spells it. */
const asAzdDefault = (value: Json | undefined): string | undefined =>
  value === undefined ? undefined : typeof value === "string" ? value : JSON.stringify(value);

/** Every role assignment the rbac module makes, evaluated, for a SAS-mode deployment with these parameters over it. */
function rbacInstances(parameters: Record<string, unknown>) {
  const rbac = moduleNamed(main, "rbac").template;
  const evaluator = new Evaluator(rbac, {
    appIdentityName: "id-app",
    hsmBackupIdentityName: "",
    hsmStorageAuth: "sas",
    hostStorageName: "sthost",
    backupStorageName: "stbak",
    backupContainerName: "mhsm-backups",
    catalogTableName: "hsmbackups",
    applicationInsightsName: "appi",
    ...parameters,
  });
  return rbac.resources
    .filter((r) => r.type === "Microsoft.Authorization/roleAssignments")
    .flatMap((r) => evaluator.instances(r));
}

/** Parameters that feed an app setting but are not meant to be set, and why. */
const NOT_SET_BY_AZD: Record<string, string> = {
  deploymentTime: "utcNow() may only be a parameter default; DEPLOYED_AT (deployedAt) is the one to set",
};

/**
 * Parameters that turn a feature on rather than carry a setting's value: the settings they feed are
 * derived (a container name, the endpoint of an account the template creates), so their azd variable
 * is named after the switch.
 */
const FEATURE_SWITCHES: Record<string, string> = {
  backupImmutabilityDays:
    "BACKUP_IMMUTABILITY_DAYS > 0 creates the vault account; BACKUP_COPY_CONTAINER and BackupCopyStorage__blobServiceUri name it",
};

describe("azd: every setting through `azd env set`, and back out for the CLI", () => {
  it("every main.bicep parameter that feeds an app setting has a main.parameters.json entry named after that setting, with the Bicep default", () => {
    const entries = azdEntries();
    const fed = new Map<string, string[]>();
    for (const [setting, parameters] of mainParametersBySetting()) {
      for (const parameter of parameters) fed.set(parameter, [...(fed.get(parameter) ?? []), setting]);
    }
    // Not vacuous: the ones the issue names are found this way (and the endpoints are not parameters).
    expect(fed.get("sasTtlMinutes")).toEqual(["SAS_TTL_MINUTES"]);
    expect(fed.get("backupContainerName")).toEqual(["BACKUP_CONTAINER"]);
    expect(fed.get("managedHsmUrls")).toEqual(["MANAGED_HSM_URLS"]);
    expect(fed.get("restoreEnabled")).toEqual(["RESTORE_ENABLED"]);
    expect([...fed.keys()].filter((p) => !(p in (main.parameters ?? {})))).toEqual([]);

    const problems: string[] = [];
    for (const [parameter, settings] of fed) {
      if (parameter in NOT_SET_BY_AZD) continue;
      const entry = entries.get(parameter);
      const bicepDefault = asAzdDefault(main.parameters![parameter]!.defaultValue);
      if (!entry) problems.push(`${parameter}: no entry (add "\${${settings[0]}=${bicepDefault ?? ""}}")`);
      else if (!settings.includes(entry.name) && !(parameter in FEATURE_SWITCHES))
        problems.push(`${parameter}: entry ${entry.name}, but it feeds ${settings.join(", ")}`);
      else if (entry.fallback !== bicepDefault)
        problems.push(`${parameter}: default "${entry.fallback}" in main.parameters.json, "${bicepDefault}" in Bicep`);
    }
    expect(problems).toEqual([]);
  });

  it("every main.parameters.json default equals the Bicep default, and a parameter without one has none", () => {
    const problems = [...azdEntries()]
      .map(([parameter, entry]) => ({
        parameter,
        entry,
        bicep: asAzdDefault(main.parameters?.[parameter]?.defaultValue),
      }))
      .filter(({ entry, bicep }) => entry.fallback !== bicep)
      .map(({ parameter, entry, bicep }) => `${parameter} (${entry.name}): "${entry.fallback}" vs Bicep "${bicep}"`);
    expect(problems).toEqual([]);
    expect(azdEntries().get("backupStorageSku")).toEqual({ name: "BACKUP_STORAGE_SKU", fallback: "Standard_ZRS" });
    expect(azdEntries().get("operatorPrincipalIds")).toEqual({ name: "OPERATOR_PRINCIPAL_IDS", fallback: "" });
  });

  it("outputs every app setting the CLI needs under its own name with the app's value, so `azd env get-values` is the CLI's settings", () => {
    const parameters = {
      environmentName: "prod",
      location: "westeurope",
      managedHsmUrls: " https://contoso.managedhsm.azure.net ,https://fabrikam.managedhsm.azure.net,",
      // Not the defaults, so that an output that ignores its parameter shows.
      sasTtlMinutes: 45,
      restoreEnabled: false,
      hsmStorageAuth: "managedIdentity",
      backupContainerName: "backups",
      catalogTableName: "catalog",
      backupSchedule: "0 30 3 * * *",
    };
    const evaluator = new Evaluator(main, parameters);
    const module = moduleNamed(main, "function-app");
    const passed = module.resource.properties!.parameters as Record<string, { value: Json } | string>;
    // Bicep compiles a conditional module parameter to one expression that yields the whole { value }.
    const appParameters = Object.fromEntries(
      Object.entries(passed).map(([name, given]) => [
        name,
        typeof given === "string" ? (evaluator.value(given) as { value: unknown }).value : evaluator.value(given.value),
      ]),
    );
    const app = module.template;
    const [config] = app.resources.filter((r) => r.type === "Microsoft.Web/sites/config");
    const [settings] = new Evaluator(app, appParameters).instances(config!);
    const expected = Object.keys(settings!.properties).filter(
      (s) => !PLATFORM_SETTINGS.includes(s) && !(s in NOT_FOR_OPERATORS),
    );
    expect(expected).toEqual(
      expect.arrayContaining(["BackupStorage__blobServiceUri", "BackupStorage__tableServiceUri"]),
    );

    const outputs = main.outputs as Record<string, { type: string; value: Json }>;
    expect(expected.filter((s) => !(s in outputs))).toEqual([]);
    for (const setting of expected) {
      expect(outputs[setting]!.type, setting).toBe("string");
      expect(evaluator.value(outputs[setting]!.value), setting).toEqual(settings!.properties[setting]);
    }
    expect(Object.keys(NOT_FOR_OPERATORS).filter((s) => s in outputs)).toEqual([]);
    // The endpoints come from the backup account the template creates.
    expect(String(outputs.BackupStorage__blobServiceUri!.value)).toMatch(
      /'Microsoft.Resources\/deployments', 'backup-storage'\), '[\d-]+'\)\.outputs\.blobEndpoint\.value\]$/,
    );
    expect(String(outputs.BackupStorage__tableServiceUri!.value)).toMatch(/\.outputs\.tableEndpoint\.value\]$/);
  });

  it("the README's azd table lists every main.parameters.json entry with its Bicep parameter, app setting and default", () => {
    const readme = readFileSync(join(ROOT, "README.md"), "utf8");
    const section = readme.split(/^### azd environment variables$/m)[1]?.split(/^#/m)[0] ?? "";
    const rows = new Map(
      [...section.matchAll(/^\| `([A-Za-z0-9_]+)` \| `(\w+)` \| (.+?) \| (.+?) \|$/gm)].map((m) => [
        m[1]!,
        { parameter: m[2]!, setting: m[3]!, fallback: m[4]! },
      ]),
    );
    const settingsOf = mainParametersBySetting();
    const problems: string[] = [];
    for (const [parameter, entry] of azdEntries()) {
      const row = rows.get(entry.name);
      const settings = [...settingsOf].filter(([, ps]) => ps.has(parameter)).map(([s]) => `\`${s}\``);
      const fallback =
        entry.fallback === undefined ? "(required)" : entry.fallback === "" ? "(empty)" : `\`${entry.fallback}\``;
      const expected = { parameter, setting: settings.length > 0 ? settings.join(", ") : "—", fallback };
      if (!row) problems.push(`no README row for ${entry.name}`);
      else if (JSON.stringify(row) !== JSON.stringify(expected))
        problems.push(`README row ${entry.name}: ${JSON.stringify(row)}, expected ${JSON.stringify(expected)}`);
    }
    expect(problems).toEqual([]);
  });
});

describe("operators (OPERATOR_PRINCIPAL_IDS)", () => {
  const A = "aaaaaaaa-1111-2222-3333-444444444444";
  const B = "bbbbbbbb-1111-2222-3333-444444444444";
  const BACKUP = `${RG}/Microsoft.Storage/storageAccounts/stbak`;
  const ROLE_NAMES: Record<string, string> = {
    "ba92f5b4-2d11-453d-a403-e96b0029c9fe": "Storage Blob Data Contributor",
    "db58b8e5-c6ad-4a2a-8342-4190687cbf4a": "Storage Blob Delegator",
    "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3": "Storage Table Data Contributor",
  };

  function mainWith(operatorPrincipalIds: string) {
    return new Evaluator(main, {
      environmentName: "test",
      location: "westeurope",
      managedHsmUrls: "https://contoso.managedhsm.azure.net",
      operatorPrincipalIds,
    });
  }

  /** Every role assignment of the rbac module, as "role @ scope -> principal (type)", and their names. */
  function rbacAssignments(parameters: Record<string, unknown>) {
    const instances = rbacInstances(parameters);
    const operators = instances
      .filter(({ properties }) => typeof properties.principalId === "string")
      .map(({ resource, properties }) => {
        const role = ROLE_NAMES[String(properties.roleDefinitionId).split("/").pop()!] ?? "unexpected role";
        return `${role} @ ${String(resource.scope)} -> ${String(properties.principalId)} (${String(properties.principalType)})`;
      })
      .sort();
    return { operators, names: instances.map((i) => i.name) };
  }

  it("reads the comma-separated ids: trimmed, lower-cased, each once; and hands them to the rbac module and the hook", () => {
    const evaluator = mainWith(` ${A.toUpperCase()}, ${B},,${A} `);
    expect(evaluator.variable("operatorIds")).toEqual([A, B]);
    expect(evaluator.value((main.outputs as Record<string, { value: Json }>).OPERATOR_PRINCIPAL_IDS!.value)).toBe(
      `${A},${B}`,
    );
    expect(moduleParameterExpression(moduleNamed(main, "rbac"), "operatorPrincipalIds")).toBe(
      "[variables('operatorIds')]",
    );
    expect(moduleParameterExpression(moduleNamed(main, "rbac"), "operatorPrincipalType")).toBe(
      "[parameters('operatorPrincipalType')]",
    );
    expect(mainWith("").variable("operatorIds")).toEqual([]);
    expect(main.parameters?.operatorPrincipalType).toMatchObject({
      defaultValue: "User",
      allowedValues: ["User", "Group", "ServicePrincipal"],
    });
  });

  it("refuses an id that is not a GUID before anything is created, naming it", () => {
    expect(() => mainWith(`${A},alice@contoso.com`).variable("operatorIds")).toThrow(
      /OPERATOR_PRINCIPAL_IDS\) must list object ids \(GUIDs\), comma-separated; not: alice@contoso\.com$/,
    );
  });

  it("SAS mode: each operator gets the Delegator on the account, Blob Data Contributor on the container and Table Data Contributor on the table; nothing else", () => {
    const { operators, names } = rbacAssignments({ operatorPrincipalIds: [A, B], operatorPrincipalType: "Group" });
    expect(operators).toEqual(
      [A, B]
        .flatMap((id) => [
          `Storage Blob Delegator @ ${BACKUP} -> ${id} (Group)`,
          `Storage Blob Data Contributor @ ${BACKUP}/blobServices/default/containers/mhsm-backups -> ${id} (Group)`,
          `Storage Table Data Contributor @ ${BACKUP}/tableServices/default/tables/hsmbackups -> ${id} (Group)`,
        ])
        .sort(),
    );
    expect(new Set(names).size).toBe(names.length);
  });

  it("managed-identity mode: no Delegator (the CLI signs no SAS); principal type User by default", () => {
    const { operators } = rbacAssignments({
      operatorPrincipalIds: [A],
      hsmStorageAuth: "managedIdentity",
      hsmBackupIdentityName: "id-hsm",
    });
    expect(operators).toEqual([
      `Storage Blob Data Contributor @ ${BACKUP}/blobServices/default/containers/mhsm-backups -> ${A} (User)`,
      `Storage Table Data Contributor @ ${BACKUP}/tableServices/default/tables/hsmbackups -> ${A} (User)`,
    ]);
  });

  it("no operators: no operator assignment", () => {
    expect(rbacAssignments({ operatorPrincipalIds: [] }).operators).toEqual([]);
    expect(rbacAssignments({}).operators).toEqual([]);
  });
});
