// An Azure Monitor workbook for the backups: last success per HSM and its age, backup history,
// failures with their messages, restores, and the HSMs' own audit events for backup and restore.
// Its queries read the app's outcome events (src/lib/telemetry.ts); test/infra holds the names together.

@description('Azure region of the workbook.')
param location string

@description('Tags for the workbook.')
param tags object

@description('Display name of the workbook.')
param displayName string

@description('Name of the Application Insights component (app events; the workbook is filed under it).')
param applicationInsightsName string

@description('Name of the Log Analytics workspace that receives the HSMs\' AuditEvent logs.')
param logAnalyticsName string

@description('Names of the HSMs that must be backed up (first labels of the MANAGED_HSM_URLS hosts).')
param hsmNames array

@description('Age in hours after which a backup counts as overdue (HEALTH_MAX_AGE_HOURS).')
param backupMaxAgeHours int

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource logAnalytics 'Microsoft.OperationalInsights/workspaces@2023-09-01' existing = {
  name: logAnalyticsName
}

var applicationInsightsId = applicationInsights.id
var logAnalyticsId = logAnalytics.id

var lastBackupQuery = replace(
  replace(
    '''
let expected = dynamic({HSM_NAMES});
let successes = traces
| where message startswith "MhsmBackupOutcome "
| extend e = parse_json(substring(message, indexof(message, " ") + 1))
| where tostring(e.status) == "Succeeded"
| extend hsm = tostring(split(replace_string(tostring(e.hsm), "https://", ""), ".")[0])
| summarize arg_max(timestamp, e) by hsm
| project hsm, lastSuccess = timestamp, folderUri = tostring(e.folderUri), durationSeconds = todouble(e.durationSeconds);
print hsm = expected
| mv-expand hsm to typeof(string)
| join kind=leftouter successes on hsm
| extend ageHours = round((now() - lastSuccess) / 1h, 1)
| extend state = case(isnull(lastSuccess), "No successful backup in range", ageHours > {MAX_AGE_HOURS}, "Overdue", "OK")
| project hsm, state, lastSuccess, ageHours, durationSeconds, folderUri
| order by hsm asc
''',
    '{HSM_NAMES}',
    string(hsmNames)
  ),
  '{MAX_AGE_HOURS}',
  string(backupMaxAgeHours)
)

var backupHistoryQuery = '''
traces
| where message startswith "MhsmBackupOutcome "
| extend e = parse_json(substring(message, indexof(message, " ") + 1))
| project timestamp, hsm = tostring(e.hsm), status = tostring(e.status), durationSeconds = todouble(e.durationSeconds), folderUri = tostring(e.folderUri), jobId = tostring(e.jobId), recordId = tostring(e.recordId)
| order by timestamp desc
'''

var backupDurationQuery = '''
traces
| where message startswith "MhsmBackupOutcome "
| extend e = parse_json(substring(message, indexof(message, " ") + 1))
| where tostring(e.status) == "Succeeded"
| project timestamp, hsm = tostring(e.hsm), durationSeconds = todouble(e.durationSeconds)
| render timechart
'''

var failuresQuery = '''
union
  (traces | where message startswith "MhsmBackupOutcome " | extend operation = "backup"),
  (traces | where message startswith "MhsmRestoreOutcome " | extend operation = "restore")
| extend e = parse_json(substring(message, indexof(message, " ") + 1))
| where tostring(e.status) !in ("Succeeded", "Skipped")
| project timestamp, operation, hsm = tostring(e.hsm), status = tostring(e.status), errorCode = tostring(e.errorCode), errorMessage = tostring(e.errorMessage), correctionOf = tostring(e.correctionOf), jobId = tostring(e.jobId), recordId = tostring(e.recordId)
| order by timestamp desc
'''

// A job the HSM accepted whose outcome was never recorded (a catalog write failed, a worker died):
// the accepted line is written before any catalog write, so the job id is here even then.
var unrecordedJobsQuery = '''
let accepted = traces
| where message startswith "MhsmJobAccepted "
| extend e = parse_json(substring(message, indexof(message, " ") + 1))
| where timestamp < ago(3h)
| project acceptedAt = timestamp, recordId = tostring(e.recordId), hsm = tostring(e.hsm), operation = tostring(e.operation), jobId = tostring(e.jobId);
let ended = union
  (traces | where message startswith "MhsmBackupOutcome "),
  (traces | where message startswith "MhsmRestoreOutcome ")
| extend e = parse_json(substring(message, indexof(message, " ") + 1))
| project recordId = tostring(e.recordId);
accepted
| join kind=leftanti ended on recordId
| order by acceptedAt desc
'''

var restoresQuery = '''
let started = traces
| where message startswith "MhsmRestoreStarted "
| extend e = parse_json(substring(message, indexof(message, " ") + 1))
| project startedAt = timestamp, recordId = tostring(e.recordId), hsm = tostring(e.hsm), folderUri = tostring(e.folderUri), backupId = tostring(e.backupId), keyName = tostring(e.keyName), jobId = tostring(e.jobId);
let ended = traces
| where message startswith "MhsmRestoreOutcome "
| extend e = parse_json(substring(message, indexof(message, " ") + 1))
| project endedAt = timestamp, recordId = tostring(e.recordId), hsm = tostring(e.hsm), status = tostring(e.status), durationSeconds = todouble(e.durationSeconds), errorCode = tostring(e.errorCode), errorMessage = tostring(e.errorMessage);
started
| join kind=fullouter ended on recordId
| extend at = coalesce(startedAt, endedAt)
| order by at desc
| project startedAt, endedAt, hsm = coalesce(hsm, hsm1), kind = iff(isempty(keyName), "full", strcat("key ", keyName)), status = iff(isempty(status), "Running (no outcome yet)", status), durationSeconds, backupId, folderUri, errorCode, errorMessage, recordId = coalesce(recordId, recordId1), jobId
'''

// Every folder a prune run meant to delete: Pruned, or Left with the reason (immutability, lease, 403, busy).
var pruneQuery = '''
traces
| where message startswith "MhsmPruneOutcome "
| extend e = parse_json(substring(message, indexof(message, " ") + 1))
| project timestamp, hsm = tostring(e.hsm), status = tostring(e.status), recordId = tostring(e.recordId), folderUri = tostring(e.folderUri), reason = tostring(e.errorMessage)
| order by timestamp desc
'''

// The HSM's own record of every backup and restore call (diagnostic category AuditEvent), whoever made it.
var hsmAuditQuery = '''
AzureDiagnostics
| where ResourceProvider == "MICROSOFT.KEYVAULT" and ResourceType == "MANAGEDHSMS" and Category == "AuditEvent"
| where OperationName contains "backup" or OperationName contains "restore" or requestUri_s contains "/backup" or requestUri_s contains "/restore"
| project TimeGenerated, hsm = Resource, OperationName, ResultType, ResultSignature, httpStatusCode_d, DurationMs, caller = identity_claim_oid_g, CallerIPAddress, requestUri_s, CorrelationId
| order by TimeGenerated desc
'''

var appEvents = {
  queryType: 0
  resourceType: 'microsoft.insights/components'
  crossComponentResources: [applicationInsightsId]
  timeContextFromParameter: 'TimeRange'
}

var workbook = {
  version: 'Notebook/1.0'
  items: [
    {
      type: 1
      name: 'intro'
      content: {
        json: '## Managed HSM backups\nEvery backup and restore the function app runs, from its outcome events in Application Insights, and the HSMs\' own audit log. A backup counts as overdue after ${backupMaxAgeHours} hours (HEALTH_MAX_AGE_HOURS).'
      }
    }
    {
      type: 9
      name: 'parameters'
      content: {
        version: 'KqlParameterItem/1.0'
        style: 'pills'
        queryType: 0
        resourceType: 'microsoft.insights/components'
        parameters: [
          {
            id: 'b7d6a0b4-3f0e-4c55-9a51-5d0f0e3f8a10'
            version: 'KqlParameterItem/1.0'
            name: 'TimeRange'
            label: 'Time range'
            type: 4
            isRequired: true
            value: {
              durationMs: 2592000000
            }
            typeSettings: {
              selectableValues: [
                { durationMs: 86400000 }
                { durationMs: 259200000 }
                { durationMs: 604800000 }
                { durationMs: 1209600000 }
                { durationMs: 2592000000 }
                { durationMs: 7776000000 }
              ]
            }
          }
        ]
      }
    }
    {
      type: 3
      name: 'last-successful-backup'
      content: union(appEvents, {
        version: 'KqlItem/1.0'
        title: 'Last successful backup per HSM'
        query: lastBackupQuery
        size: 4
        visualization: 'table'
      })
    }
    {
      type: 3
      name: 'backup-history'
      content: union(appEvents, {
        version: 'KqlItem/1.0'
        title: 'Backup history'
        query: backupHistoryQuery
        size: 0
        visualization: 'table'
      })
    }
    {
      type: 3
      name: 'backup-duration'
      content: union(appEvents, {
        version: 'KqlItem/1.0'
        title: 'Backup duration (seconds)'
        query: backupDurationQuery
        size: 0
        visualization: 'timechart'
      })
    }
    {
      type: 3
      name: 'failures'
      content: union(appEvents, {
        version: 'KqlItem/1.0'
        title: 'Failed backups and restores, with their messages'
        query: failuresQuery
        size: 0
        visualization: 'table'
      })
    }
    {
      type: 3
      name: 'unrecorded-jobs'
      content: union(appEvents, {
        version: 'KqlItem/1.0'
        title: 'Jobs the HSM accepted with no recorded outcome after 3 hours (run: hsm-backup reconcile)'
        query: unrecordedJobsQuery
        size: 0
        visualization: 'table'
      })
    }
    {
      type: 3
      name: 'restores'
      content: union(appEvents, {
        version: 'KqlItem/1.0'
        title: 'Restores'
        query: restoresQuery
        size: 0
        visualization: 'table'
      })
    }
    {
      type: 3
      name: 'prune'
      content: union(appEvents, {
        version: 'KqlItem/1.0'
        title: 'Pruned backup folders, and folders left with the reason (RETENTION_DAYS, RETENTION_MIN_KEEP)'
        query: pruneQuery
        size: 0
        visualization: 'table'
      })
    }
    {
      type: 1
      name: 'audit-intro'
      content: {
        json: '### The HSMs\' audit log\nBackup and restore calls as each HSM recorded them, from its AuditEvent diagnostic logs (empty unless the HSM resource ids were given at deployment, or the HSM sends its logs to this workspace otherwise).'
      }
    }
    {
      type: 3
      name: 'hsm-audit'
      content: {
        version: 'KqlItem/1.0'
        title: 'HSM audit events: backup and restore'
        query: hsmAuditQuery
        size: 0
        visualization: 'table'
        queryType: 0
        resourceType: 'microsoft.operationalinsights/workspaces'
        crossComponentResources: [logAnalyticsId]
        timeContextFromParameter: 'TimeRange'
      }
    }
  ]
  fallbackResourceIds: [applicationInsightsId]
  '$schema': 'https://github.com/Microsoft/Application-Insights-Workbooks/blob/master/schema/workbook.json'
}

resource backupsWorkbook 'Microsoft.Insights/workbooks@2023-06-01' = {
  // Workbook names must be GUIDs; this one is stable per component, so redeploying updates it.
  name: guid(applicationInsightsId, 'managed-hsm-backups-workbook')
  location: location
  tags: tags
  kind: 'shared'
  properties: {
    displayName: displayName
    category: 'workbook'
    sourceId: applicationInsightsId
    serializedData: string(workbook)
  }
}

output id string = backupsWorkbook.id
