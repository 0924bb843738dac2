// Alerting: an action group, four log alerts on the app's outcome events, and an availability test
// (with its alert) against /api/health.
//
// The app writes each outcome as ONE trace line "<EventName> <json>" (src/lib/telemetry.ts); the
// queries below read exactly those names, and test/infra checks that they name no other event and
// leave none out.

@description('Azure region of the log alert rules and the availability test (that of Application Insights).')
param location string

@description('Tags for every resource.')
param tags object

@description('Prefix of every resource name here, e.g. the function app name.')
param namePrefix string

@description('Resource id of the Application Insights component the app reports to.')
param applicationInsightsId string

@description('Email address that receives the alerts; empty for none (the alerts still show in the portal).')
param alertEmail string

@description('Names of the HSMs that must be backed up (first labels of the MANAGED_HSM_URLS hosts).')
param hsmNames array

@description('An HSM whose newest successful backup is older than this many hours raises the stale-backup alert (the same limit as HEALTH_MAX_AGE_HOURS).')
@minValue(1)
@maxValue(47)
param backupMaxAgeHours int

@description('Unix time (seconds) when the grace after deployment ends (DEPLOYED_AT + HEALTH_GRACE_HOURS): before it, an HSM with no successful backup in the query range is awaiting its first backup, not overdue.')
param graceEndsEpoch int

@description('URL the availability test calls: the app\'s anonymous /api/health.')
param healthUrl string

// Action group names and short names are fixed-length fields; the short name is what SMS/email show.
resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = {
  name: '${namePrefix}-ops'
  location: 'Global'
  tags: tags
  properties: {
    groupShortName: 'hsmbackup'
    enabled: true
    emailReceivers: empty(alertEmail)
      ? []
      : [
          {
            name: 'operations'
            emailAddress: alertEmail
            useCommonAlertSchema: true
          }
        ]
  }
}

// Every HSM in MANAGED_HSM_URLS that has no successful backup inside the limit, including one that
// never had any — except, until the grace after deployment ends, one with no success in the whole
// two-day range: a new deployment (or a newly added HSM) is awaiting its first backup, as /api/health
// says. /api/health reads the whole catalog, so an HSM whose only success is older than the range
// still makes it answer 503 and the availability alert fire. The app may report an HSM by name or by
// URL: both are reduced to the first DNS label.
var staleBackupQuery = replace(
  replace(
    replace(
      '''
let expected = dynamic({HSM_NAMES});
let graceEnds = unixtime_seconds_todatetime({GRACE_ENDS_EPOCH});
let succeeded = traces
| where timestamp > ago(2d)
| where message startswith "MhsmBackupOutcome "
| extend e = parse_json(substring(message, indexof(message, " ") + 1))
| where tostring(e.status) == "Succeeded"
| extend hsm = tostring(split(replace_string(tostring(e.hsm), "https://", ""), ".")[0])
| summarize newest = max(timestamp) by hsm;
let recent = succeeded
| where newest > ago({MAX_AGE_HOURS}h)
| project hsm;
let seen = succeeded
| project hsm;
print hsm = expected
| mv-expand hsm to typeof(string)
| join kind=leftanti recent on hsm
| where now() >= graceEnds or hsm in (seen)
| project hsm
''',
      '{HSM_NAMES}',
      string(hsmNames)
    ),
    '{MAX_AGE_HOURS}',
    string(backupMaxAgeHours)
  ),
  '{GRACE_ENDS_EPOCH}',
  string(graceEndsEpoch)
)

var backupFailedQuery = '''
traces
| where message startswith "MhsmBackupOutcome "
| extend e = parse_json(substring(message, indexof(message, " ") + 1))
| where tostring(e.status) !in ("Succeeded", "Skipped")
| project timestamp, hsm = tostring(e.hsm), status = tostring(e.status), errorCode = tostring(e.errorCode), errorMessage = tostring(e.errorMessage), recordId = tostring(e.recordId), jobId = tostring(e.jobId)
'''

var restoreStartedQuery = '''
traces
| where message startswith "MhsmRestoreStarted "
| extend e = parse_json(substring(message, indexof(message, " ") + 1))
| project timestamp, hsm = tostring(e.hsm), requestedBy = tostring(e.requestedBy), status = tostring(e.status), folderUri = tostring(e.folderUri), keyName = tostring(e.keyName), recordId = tostring(e.recordId), jobId = tostring(e.jobId)
'''

var restoreEndedQuery = '''
traces
| where message startswith "MhsmRestoreOutcome "
| extend e = parse_json(substring(message, indexof(message, " ") + 1))
| project timestamp, hsm = tostring(e.hsm), status = tostring(e.status), durationSeconds = todouble(e.durationSeconds), errorCode = tostring(e.errorCode), errorMessage = tostring(e.errorMessage), recordId = tostring(e.recordId), jobId = tostring(e.jobId)
'''

// Event alerts are stateless (autoMitigate false): each evaluation that finds events notifies once,
// and window = frequency, so an event is reported by exactly one evaluation.
var logAlerts = [
  {
    name: 'backup-stale'
    displayName: 'Managed HSM backup is overdue'
    description: 'An HSM in MANAGED_HSM_URLS has no successful backup in the last ${backupMaxAgeHours} hours (the "hsm" dimension names it); one never backed up only once the grace after deployment (HEALTH_GRACE_HOURS) has ended. Check the workbook for the failures behind it, then the function app\'s logs. Resolves by itself after the next successful backup.'
    severity: 1
    query: staleBackupQuery
    dimensions: ['hsm']
    evaluationFrequency: 'PT1H'
    windowSize: 'PT1H'
    // The query looks back further than one window; it bounds itself with ago().
    overrideQueryTimeRange: 'P2D'
    autoMitigate: true
  }
  {
    name: 'backup-failed'
    displayName: 'Managed HSM backup failed'
    description: 'A backup ended in a status other than Succeeded. The dimensions give the HSM and status; the workbook\'s failures table has the error code and message.'
    severity: 1
    query: backupFailedQuery
    dimensions: ['hsm', 'status', 'errorCode']
    evaluationFrequency: 'PT5M'
    windowSize: 'PT5M'
    overrideQueryTimeRange: ''
    autoMitigate: false
  }
  {
    name: 'restore-started'
    displayName: 'Managed HSM restore started'
    description: 'Someone started a restore: the HSM is being wiped back to a backup and refuses data-plane calls until it ends. Make sure it was intended.'
    severity: 2
    query: restoreStartedQuery
    dimensions: ['hsm', 'requestedBy']
    evaluationFrequency: 'PT5M'
    windowSize: 'PT5M'
    overrideQueryTimeRange: ''
    autoMitigate: false
  }
  {
    name: 'restore-ended'
    displayName: 'Managed HSM restore ended'
    description: 'A restore finished; the status dimension is its outcome (Succeeded, Failed, Canceled). After a restore, check that the app still holds its Managed HSM Backup/Restore roles: the restore brings back the role assignments of the backup.'
    severity: 2
    query: restoreEndedQuery
    dimensions: ['hsm', 'status']
    evaluationFrequency: 'PT5M'
    windowSize: 'PT5M'
    overrideQueryTimeRange: ''
    autoMitigate: false
  }
]

resource rules 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = [
  for rule in logAlerts: {
    name: '${namePrefix}-${rule.name}'
    location: location
    tags: tags
    kind: 'LogAlert'
    properties: {
      displayName: rule.displayName
      description: rule.description
      severity: rule.severity
      enabled: true
      scopes: [applicationInsightsId]
      evaluationFrequency: rule.evaluationFrequency
      windowSize: rule.windowSize
      overrideQueryTimeRange: empty(rule.overrideQueryTimeRange) ? null : rule.overrideQueryTimeRange
      autoMitigate: rule.autoMitigate
      criteria: {
        allOf: [
          {
            query: rule.query
            timeAggregation: 'Count'
            operator: 'GreaterThan'
            threshold: 0
            dimensions: [
              for dimension in rule.dimensions: {
                name: dimension
                operator: 'Include'
                values: ['*']
              }
            ]
            failingPeriods: {
              numberOfEvaluationPeriods: 1
              minFailingPeriodsToAlert: 1
            }
          }
        ]
      }
      actions: {
        actionGroups: [actionGroup.id]
      }
    }
  }
]

// Standard availability test: /api/health answers 503 when an HSM's backup is overdue, so this also
// catches an app that is down or cannot read its catalog (which the log alerts, fed by the app itself,
// cannot see).
var availabilityLocations = [
  'us-va-ash-azr' // East US
  'us-ca-sjc-azr' // West US
  'emea-nl-ams-azr' // West Europe
  'emea-gb-db3-azr' // North Europe
  'apac-sg-sin-azr' // Southeast Asia
]

resource healthTest 'Microsoft.Insights/webtests@2022-06-15' = {
  name: '${namePrefix}-health'
  location: location
  // The hidden-link tag ties the test to the component; without it the portal does not list it.
  tags: union(tags, { 'hidden-link:${applicationInsightsId}': 'Resource' })
  kind: 'standard'
  properties: {
    SyntheticMonitorId: '${namePrefix}-health'
    Name: 'Backup health (${healthUrl})'
    Description: 'GET /api/health: 200 while every HSM has a recent successful backup, 503 otherwise.'
    Enabled: true
    Kind: 'standard'
    Frequency: 900
    Timeout: 60
    RetryEnabled: true
    Locations: [for id in availabilityLocations: { Id: id }]
    Request: {
      RequestUrl: healthUrl
      HttpVerb: 'GET'
      ParseDependentRequests: false
      FollowRedirects: false
    }
    ValidationRules: {
      ExpectedHttpStatusCode: 200
      SSLCheck: true
      SSLCertRemainingLifetimeCheck: 7
    }
  }
}

resource healthAlert 'Microsoft.Insights/metricAlerts@2018-03-01' = {
  name: '${namePrefix}-health-failing'
  location: 'global'
  tags: tags
  properties: {
    description: '/api/health failed from at least 2 of ${length(availabilityLocations)} locations: the app is down, cannot read its catalog, or reports an overdue backup (503).'
    severity: 1
    enabled: true
    scopes: [
      healthTest.id
      applicationInsightsId
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    criteria: {
      'odata.type': 'Microsoft.Azure.Monitor.WebtestLocationAvailabilityCriteria'
      webTestId: healthTest.id
      componentId: applicationInsightsId
      failedLocationCount: 2
    }
    actions: [
      {
        actionGroupId: actionGroup.id
      }
    ]
  }
}

output actionGroupId string = actionGroup.id
