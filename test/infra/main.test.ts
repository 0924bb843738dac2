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
  resourcesOfType,
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
    expect(p("healthMaxAgeHours")).toBe(defaults.healthMaxAgeHours);
    expect(main.parameters?.hsmApiVersion?.allowedValues).toEqual([...HSM_API_VERSIONS]);
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
    hsmRequestTimeoutSeconds: 30,
    maxPollIntervalSeconds: 60,
    jobTimeoutMinutes: 120,
    reconcileSchedule: "0 */15 * * * *",
    backupConcurrency: 8,
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

  function assignments(hsmStorageAuth: "sas" | "managedIdentity"): string[] {
    const rbac = moduleNamed(main, "rbac").template;
    const evaluator = new Evaluator(rbac, {
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

  it("runs the HSM role hook after provisioning, failing azd when it fails", () => {
    expect(yaml).toMatch(/postprovision:/);
    expect(yaml.match(/node dist\/tools\/grant-hsm-roles\.js/g)).toHaveLength(2);
    expect(yaml).not.toMatch(/continueOnError: true/);
    for (const output of ["MANAGED_HSM_URLS", "FUNCTION_IDENTITY_PRINCIPAL_ID", "RESTORE_ENABLED"]) {
      expect(main.outputs, output).toHaveProperty(output);
    }
  });
});
