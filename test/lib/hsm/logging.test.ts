/**
 * SDK logging the Azure way (issue 10): with the level at verbose (what AZURE_LOG_LEVEL=verbose
 * sets), @azure/logger shows the HSM client's wire calls under "azure:mhsm-backup" — method, URL with its
 * api-version, the Key Vault correlation headers — and never the SAS the request body carries.
 */
import { AzureLogger, getLogLevel, setLogLevel, type AzureLogLevel } from "@azure/logger";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { backupAll } from "../../../src/lib/backup.js";
import { ManagedHsmBackupClient } from "../../../src/lib/hsm/client.js";
import { safeLogger } from "../../../src/lib/logger.js";
import { Night } from "../../support/bad-night.js";
import { backupRestoreEntries, loadRecording, ReplayHttpClient } from "../../support/recordings.js";
import { tokenCredential } from "../../support/scripted-hsm.js";

const night = new Night();
const quiet = safeLogger({ log: () => {}, warn: () => {}, error: () => {} });
let lines: string[] = [];
let level: AzureLogLevel | undefined;
let original: typeof AzureLogger.log;

beforeEach(() => {
  level = getLogLevel();
  original = AzureLogger.log;
  lines = [];
  AzureLogger.log = (...args: unknown[]) => void lines.push(args.map(String).join(" "));
  setLogLevel("verbose");
});

afterEach(async () => {
  setLogLevel(level);
  AzureLogger.log = original;
  await night.stopAll();
});

describe("the HSM client's wire log", () => {
  it("shows each call with its request id at verbose, and no SAS signature", async () => {
    const hsm = await night.hostile();
    const { app } = await night.app([hsm.url]);
    const [result] = await backupAll(app.deps, quiet, { trigger: "test" });
    expect(result?.outcome).toBe("Succeeded");

    const start = hsm.authenticated("POST", /^\/backup$/)[0]!;
    const token = (start.body as { token?: string }).token!;
    const signature = new URLSearchParams(token).get("sig")!;
    expect(signature.length).toBeGreaterThan(20);

    const wire = lines.filter((l) => l.startsWith("azure:mhsm-backup:info "));
    const requests = wire.filter((l) =>
      /^azure:mhsm-backup:info Request: .*"url": "http:\/\/127\.0\.0\.1:\d+\/backup\?api-version=7\.6"/s.test(l),
    );
    expect(requests.length).toBeGreaterThan(0);
    for (const request of requests) expect(request).toMatch(/"x-ms-client-request-id": "[0-9a-f-]{36}"/);
    expect(requests.some((l) => /"authorization": "REDACTED"/.test(l))).toBe(true);
    expect(wire).toContain("azure:mhsm-backup:info Response status code: 202");
    // An allowed header is shown; one not on the list is not.
    expect(
      wire.some((l) =>
        /^azure:mhsm-backup:info Headers: .*"azure-asyncoperation": "http:\/\/127\.0\.0\.1:\d+\/backup\/[0-9a-f]+\/pending/s.test(
          l,
        ),
      ),
    ).toBe(true);
    const all = lines.join("\n");
    for (const form of [signature, encodeURIComponent(signature)]) expect(all).not.toContain(form);
    expect(all).not.toMatch(/sig=(?!REDACTED)/);
  });

  it("shows the Key Vault headers a support case asks for, as a real HSM sent them", async () => {
    const entries = backupRestoreEntries(
      loadRecording(
        "js-keyvaultbackupclient_beginbackup-recording_returns_the_correct_backup_result_when_successful.json",
      ),
    );
    const start = entries.find((e) => e.method === "POST" && e.status === 202)!;
    const client = new ManagedHsmBackupClient(entries[0]!.url.origin, tokenCredential, {
      httpClient: new ReplayHttpClient(entries),
      serviceVersion: entries[0]!.url.searchParams.get("api-version")!,
      delay: async () => {},
    });
    const body = start.requestBody as { storageResourceUri: string; token: string };
    await client.beginBackup(body.storageResourceUri, body.token);

    const headers = lines.filter((l) => l.startsWith("azure:mhsm-backup:info Headers: ")).join("\n");
    for (const name of ["x-ms-keyvault-region", "x-ms-keyvault-network-info", "x-ms-request-id"]) {
      expect(start.headers[name]).toBeTruthy();
      expect(headers).toContain(`"${name}": ${JSON.stringify(start.headers[name])}`);
    }
  });
});
