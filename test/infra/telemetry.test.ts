import { beforeAll, describe, expect, it } from "vitest";
import { EVENTS, formatEvent, type EventName, type OutcomeFields } from "../../src/lib/telemetry.js";
import { CONTEXT, Evaluator, compile, moduleNamed, type Template } from "./arm.js";

const RG = `/subscriptions/${CONTEXT.subscriptionId}/resourceGroups/${CONTEXT.resourceGroup}/providers`;
const INSIGHTS = `${RG}/Microsoft.Insights/components/appi`;
const WORKSPACE = `${RG}/Microsoft.OperationalInsights/workspaces/log`;
const EVENT_NAMES: readonly string[] = Object.values(EVENTS);

/** One event with every field set: what the app's log line looks like, and which fields exist. */
const SAMPLE: Required<OutcomeFields> = {
  hsm: "contoso",
  recordId: "r1",
  jobId: "j1",
  status: "Succeeded",
  folderUri: "https://stbak.blob.core.windows.net/mhsm-backups/mhsm-contoso-2026112802000012",
  backupId: "b1",
  keyName: "k1",
  durationSeconds: 42,
  errorCode: "E",
  errorMessage: "m",
  operation: "backup",
  correctionOf: "TimedOut JobTimeout",
  origin: "discovered",
  verification: "Passed",
  verificationMessage: "v",
  copyStatus: "Failed",
  copyMessage: "c",
  requestedBy: "ops@contoso.com (00000000-0000-0000-0000-000000000001)",
  requestId: "0b6a3e4c-8f2d-4c1e-9a57-3d2f1b0e9c11",
  clientRequestId: "5e0d2a91-7c44-4b8e-b1f3-6a9c2d7e4f08",
};
const FIELDS = Object.keys(SAMPLE);
const GRACE_ENDS_EPOCH = Date.parse("2026-12-02T05:00:00Z") / 1000;

let main: Template;
let queries: { source: string; query: string }[];

function alertRules(alertEmail = "ops@example.com") {
  const alerts = moduleNamed(main, "alerts").template;
  const evaluator = new Evaluator(alerts, {
    location: "westeurope",
    tags: {},
    namePrefix: "func",
    applicationInsightsId: INSIGHTS,
    alertEmail,
    hsmNames: ["contoso", "fabrikam"],
    backupMaxAgeHours: 26,
    graceEndsEpoch: GRACE_ENDS_EPOCH,
    healthUrl: "https://func.azurewebsites.net/api/health",
  });
  const of = (type: string) => alerts.resources.filter((r) => r.type === type).flatMap((r) => evaluator.instances(r));
  return { of };
}

function workbookItems() {
  const workbook = moduleNamed(main, "workbook").template;
  const evaluator = new Evaluator(workbook, {
    location: "westeurope",
    tags: {},
    displayName: "Managed HSM backups",
    applicationInsightsName: "appi",
    logAnalyticsName: "log",
    hsmNames: ["contoso", "fabrikam"],
    backupMaxAgeHours: 26,
  });
  const [instance] = evaluator.instances(workbook.resources.find((r) => r.type === "Microsoft.Insights/workbooks")!);
  const properties = instance!.properties as { serializedData: string; sourceId: string; category: string };
  const data = JSON.parse(properties.serializedData) as {
    items: {
      name: string;
      type: number;
      content: { query?: string; title?: string; resourceType?: string; crossComponentResources?: string[] };
    }[];
  };
  return { properties, items: data.items };
}

function eventsIn(query: string): string[] {
  return [...new Set(query.match(/\bMhsm[A-Z]\w*/g) ?? [])];
}

beforeAll(() => {
  main = compile("infra/main.bicep").template;
  const rules = alertRules().of("Microsoft.Insights/scheduledQueryRules");
  const items = workbookItems().items;
  queries = [
    ...rules.map((r) => ({
      source: `alert ${r.name}`,
      query: String((r.properties.criteria as { allOf: { query: string }[] }).allOf[0]!.query),
    })),
    ...items
      .filter((i) => i.content.query !== undefined)
      .map((i) => ({ source: `workbook ${i.name}`, query: i.content.query! })),
  ];
}, 180_000);

describe("alert and workbook queries ↔ the events the app emits (src/lib/telemetry.ts)", () => {
  it("name only events the code emits", () => {
    for (const { source, query } of queries) {
      for (const name of eventsIn(query)) expect(EVENT_NAMES, `${source} names ${name}`).toContain(name);
    }
  });

  it("use every event somewhere", () => {
    const used = new Set(queries.flatMap((q) => eventsIn(q.query)));
    expect([...used].sort()).toEqual([...EVENT_NAMES].sort());
  });

  it('match the line format: each event is selected with startswith "<EventName> " and its JSON parsed from after the first space', () => {
    for (const { source, query } of queries) {
      const events = eventsIn(query);
      if (events.length === 0) continue;
      for (const name of events) expect(query, source).toContain(`message startswith "${name} "`);
      expect(query, source).toContain(`parse_json(substring(message, indexof(message, " ") + 1))`);
    }
    for (const name of EVENT_NAMES) {
      const line = formatEvent(name as EventName, SAMPLE);
      expect(line.startsWith(`${name} `)).toBe(true);
      expect(JSON.parse(line.slice(line.indexOf(" ") + 1))).toEqual(SAMPLE);
    }
  });

  it("read only fields the events carry", () => {
    for (const { source, query } of queries) {
      for (const [, field] of query.matchAll(/\be\.(\w+)/g))
        expect(FIELDS, `${source} reads e.${field}`).toContain(field);
    }
  });
});

describe("alert rules", () => {
  it("cover: no successful backup of some HSM in the limit, a failed backup, a restore started, a restore ended (with outcome)", () => {
    const rules = alertRules().of("Microsoft.Insights/scheduledQueryRules");
    const summary = Object.fromEntries(
      rules.map((r) => {
        const criteria = (r.properties.criteria as { allOf: { query: string; dimensions: { name: string }[] }[] })
          .allOf[0]!;
        return [r.name, { events: eventsIn(criteria.query), dimensions: criteria.dimensions.map((d) => d.name) }];
      }),
    );
    expect(summary).toEqual({
      "func-backup-stale": { events: [EVENTS.backupOutcome], dimensions: ["hsm"] },
      "func-backup-failed": { events: [EVENTS.backupOutcome], dimensions: ["hsm", "status", "errorCode"] },
      "func-restore-started": { events: [EVENTS.restoreStarted], dimensions: ["hsm", "requestedBy"] },
      "func-restore-ended": { events: [EVENTS.restoreOutcome], dimensions: ["hsm", "status"] },
    });
    for (const rule of rules) {
      expect(rule.properties.scopes).toEqual([INSIGHTS]);
      expect(rule.properties.actions).toEqual({ actionGroups: [`${RG}/Microsoft.Insights/actionGroups/func-ops`] });
      expect(rule.properties.enabled).toBe(true);
    }
  });

  it("the overdue-backup rule lists every configured HSM and looks back the limit (26 h) inside a two-day query range", () => {
    const stale = alertRules()
      .of("Microsoft.Insights/scheduledQueryRules")
      .find((r) => r.name === "func-backup-stale")!;
    const query = String((stale.properties.criteria as { allOf: { query: string }[] }).allOf[0]!.query);
    expect(query).toContain('let expected = dynamic(["contoso","fabrikam"]);');
    expect(query).toContain("where newest > ago(26h)");
    expect(query).toContain('where tostring(e.status) == "Succeeded"');
    expect(query).toContain("| summarize newest = max(timestamp) by hsm;");
    expect(query).toContain("join kind=leftanti recent on hsm");
    expect(stale.properties).toMatchObject({
      evaluationFrequency: "PT1H",
      windowSize: "PT1H",
      overrideQueryTimeRange: "P2D",
      autoMitigate: true,
    });
  });

  it("the overdue-backup rule spares an HSM never backed up until the grace after deployment ends, and only such an HSM", () => {
    const stale = alertRules()
      .of("Microsoft.Insights/scheduledQueryRules")
      .find((r) => r.name === "func-backup-stale")!;
    const query = String((stale.properties.criteria as { allOf: { query: string }[] }).allOf[0]!.query);
    expect(query).toContain(`let graceEnds = unixtime_seconds_todatetime(${GRACE_ENDS_EPOCH});`);
    // "seen": every HSM with a success anywhere in the two-day range; only the others wait for the grace.
    expect(query).toMatch(/let seen = succeeded\n\| project hsm;/);
    expect(query.trim().split("\n").slice(-2)).toEqual([
      "| where now() >= graceEnds or hsm in (seen)",
      "| project hsm",
    ]);
    expect(query).not.toMatch(/\{[A-Z_]+\}/);
  });

  it("emails the address given, and nobody when it is empty", () => {
    const [group] = alertRules().of("Microsoft.Insights/actionGroups");
    expect(group!.properties.emailReceivers).toEqual([
      { name: "operations", emailAddress: "ops@example.com", useCommonAlertSchema: true },
    ]);
    const [silent] = alertRules("").of("Microsoft.Insights/actionGroups");
    expect(silent!.properties.emailReceivers).toEqual([]);
  });

  it("an Application Insights standard availability test calls /api/health, with an alert on it", () => {
    const { of } = alertRules();
    const [test] = of("Microsoft.Insights/webtests");
    expect(test!.resource.kind).toBe("standard");
    expect(test!.resource.tags).toEqual({ [`hidden-link:${INSIGHTS}`]: "Resource" });
    expect(test!.properties).toMatchObject({
      Kind: "standard",
      Enabled: true,
      Request: { RequestUrl: "https://func.azurewebsites.net/api/health", HttpVerb: "GET" },
      ValidationRules: { ExpectedHttpStatusCode: 200, SSLCheck: true },
    });
    const [alert] = of("Microsoft.Insights/metricAlerts");
    expect(alert!.properties.criteria).toEqual({
      "odata.type": "Microsoft.Azure.Monitor.WebtestLocationAvailabilityCriteria",
      webTestId: `${RG}/Microsoft.Insights/webtests/func-health`,
      componentId: INSIGHTS,
      failedLocationCount: 2,
    });
  });

  it("points the availability test at the deployed app's host name", () => {
    const healthUrl = String(
      (moduleNamed(main, "alerts").resource.properties!.parameters as Record<string, { value: string }>).healthUrl!
        .value,
    );
    expect(healthUrl).toMatch(
      /^\[format\('https:\/\/\{0\}\/api\/health', reference\(.*'function-app'\).*\.outputs\.defaultHostName\.value\)\]$/,
    );
  });
});

describe("the workbook", () => {
  it("is filed under Application Insights and shows last success per HSM, history, failures, restores and the HSM audit log", () => {
    const { properties, items } = workbookItems();
    expect(properties).toMatchObject({ category: "workbook", sourceId: INSIGHTS });
    const titled = Object.fromEntries(items.filter((i) => i.type === 3).map((i) => [i.name, i.content]));
    expect(Object.keys(titled)).toEqual([
      "last-successful-backup",
      "backup-history",
      "backup-duration",
      "failures",
      "unrecorded-jobs",
      "restores",
      "prune",
      "hsm-audit",
    ]);

    expect(titled["last-successful-backup"]!.query).toContain('dynamic(["contoso","fabrikam"])');
    expect(titled["last-successful-backup"]!.query).toContain("ageHours > 26");
    expect(titled["backup-history"]!.query).toContain("durationSeconds");
    expect(titled.failures!.query).toContain("errorMessage");
    expect(eventsIn(titled.failures!.query!).sort()).toEqual([EVENTS.backupOutcome, EVENTS.restoreOutcome].sort());
    expect(eventsIn(titled.restores!.query!).sort()).toEqual([EVENTS.restoreOutcome, EVENTS.restoreStarted].sort());
    expect(eventsIn(titled["unrecorded-jobs"]!.query!).sort()).toEqual(
      [EVENTS.backupOutcome, EVENTS.jobAccepted, EVENTS.restoreOutcome].sort(),
    );
    expect(eventsIn(titled.prune!.query!)).toEqual([EVENTS.pruneOutcome]);
    expect(titled.prune!.query).toContain("reason = tostring(e.errorMessage)");
    expect(titled.failures!.query).toContain('!in ("Succeeded", "Skipped")');
    for (const name of [
      "last-successful-backup",
      "backup-history",
      "backup-duration",
      "failures",
      "unrecorded-jobs",
      "restores",
      "prune",
    ]) {
      expect(titled[name]).toMatchObject({
        resourceType: "microsoft.insights/components",
        crossComponentResources: [INSIGHTS],
      });
    }

    const audit = titled["hsm-audit"]!;
    expect(audit).toMatchObject({
      resourceType: "microsoft.operationalinsights/workspaces",
      crossComponentResources: [WORKSPACE],
    });
    expect(audit.query).toMatch(
      /^AzureDiagnostics\n\| where ResourceProvider == "MICROSOFT\.KEYVAULT" and ResourceType == "MANAGEDHSMS" and Category == "AuditEvent"/,
    );
    expect(audit.query).toMatch(/backup/);
    expect(audit.query).toMatch(/restore/);
  });
});
