// Managed HSM backups on Azure Functions (Flex Consumption), in the azd layout: `azd up` deploys this
// file at subscription scope, then the postprovision hook (tools/grant-hsm-roles.ts) grants the app's
// identity its Managed HSM local roles, which ARM cannot assign.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('Name of the azd environment; seeds the unique suffix of every resource name.')
param environmentName string

@minLength(1)
@description('Azure region for every resource (it must offer Flex Consumption).')
@metadata({
  azd: {
    type: 'location'
  }
})
param location string

@description('Resource group to create or reuse; default rg-<environment name>.')
param resourceGroupName string = ''

@minLength(1)
@description('Comma-separated base URLs of the Managed HSMs to back up, e.g. https://contoso.managedhsm.azure.net (MANAGED_HSM_URLS).')
param managedHsmUrls string

@description('Comma-separated ARM resource ids of the same HSMs (/subscriptions/.../providers/Microsoft.KeyVault/managedHSMs/<name>), in any resource group or subscription. When given, each HSM sends its AuditEvent logs to the workspace (you need permission to write diagnostic settings on them). Empty: no diagnostic settings.')
param managedHsmResourceIds string = ''

@description('''How an HSM reaches the backup container (HSM_STORAGE_AUTH).
"sas": the app signs a short-lived user-delegation SAS per job. Needs the backup account reachable from the public network.
"managedIdentity": the HSM uses its own user-assigned identity, which this template creates (and grants Storage Blob Data Contributor on the backup account); you attach it to each HSM once (`az keyvault update-hsm --hsm-name <name> --mi-user-assigned <HSM_BACKUP_IDENTITY_ID>`). Works with public network access off (trusted-services bypass). Needs HSM_API_VERSION 7.5 or later.''')
@allowed([
  'sas'
  'managedIdentity'
])
param hsmStorageAuth string = 'sas'

@description('''Public network access to the backup account.
"Enabled" (default): reachable from any network, Entra ID only (shared keys are off). Required by "sas" mode.
"Disabled": only private endpoints and trusted Azure services, so a leaked token is useless off your network. Only with hsmStorageAuth "managedIdentity"; the function app must then reach blob and table over private endpoints from a VNet-integrated app, which this template does not create.''')
@allowed([
  'Enabled'
  'Disabled'
])
param backupStoragePublicNetworkAccess string = 'Enabled'

@description('Whether the app may restore (RESTORE_ENABLED). When true the postprovision hook also grants the app Managed HSM Restore, which lets it wipe an HSM back to a backup.')
param restoreEnabled bool = true

@description('Whether every backup is preceded by a pre-flight (PREFLIGHT): the backup container exists, the SAS can be signed, and (api-version 7.6+) the HSM\'s own pre-backup check passes. A failed pre-flight records the backup Failed with PreflightFailed and a message naming what is missing.')
param preflight bool = true

@description('When backups run (BACKUP_SCHEDULE): six-field NCRONTAB, UTC.')
param backupSchedule string = '0 0 2 * * *'

@description('An HSM without a successful backup for this many hours is overdue: /api/health answers 503 and the stale-backup alert fires (HEALTH_MAX_AGE_HOURS). At most 47: the alert looks back two days.')
@minValue(1)
@maxValue(47)
param healthMaxAgeHours int = 26

@description('An HSM never backed up is not overdue (for /api/health and the stale-backup alert) until this many hours after DEPLOYED_AT, so a new deployment pages nobody before its first backup could run; 0 turns the grace off (HEALTH_GRACE_HOURS).')
@minValue(0)
@maxValue(744)
param healthGraceHours int = 26

@description('DEPLOYED_AT: where the grace of healthGraceHours starts, a UTC time such as 2026-12-01T03:00:00Z. Empty (default): the time of this deployment, so each provisioning restarts the grace of HSMs never backed up; set a fixed time to keep it from restarting.')
param deployedAt string = ''

@description('The time of this deployment, used for DEPLOYED_AT when deployedAt is empty. Not meant to be set: utcNow() is only allowed as a parameter default.')
param deploymentTime string = utcNow('u')

// ISO 8601 with a "T", which the app's DEPLOYED_AT and the alert's KQL both read.
var graceStart = replace(empty(deployedAt) ? deploymentTime : deployedAt, ' ', 'T')

@description('Timeout of each call to an HSM or to storage, in seconds (HSM_REQUEST_TIMEOUT_SECONDS).')
@minValue(5)
@maxValue(120)
param hsmRequestTimeoutSeconds int = 30

@description('Cap on any wait an HSM asks for with Retry-After, in seconds (MAX_POLL_INTERVAL_SECONDS).')
@minValue(1)
@maxValue(300)
param maxPollIntervalSeconds int = 60

@description('A backup or restore still running after this many minutes is recorded TimedOut; a later status read that sees its real outcome corrects it (JOB_TIMEOUT_MINUTES).')
@minValue(10)
@maxValue(1440)
param jobTimeoutMinutes int = 120

@description('When the reconcile timer settles open records and adopts unrecorded backups (RECONCILE_SCHEDULE): six-field NCRONTAB, UTC.')
param reconcileSchedule string = '0 */15 * * * *'

@description('At most this many HSMs are backed up at once (BACKUP_CONCURRENCY).')
@minValue(1)
@maxValue(100)
param backupConcurrency int = 8

@description('prune deletes the blobs of backup folders older than this many days; the records stay, marked Pruned (RETENTION_DAYS).')
@minValue(1)
@maxValue(3650)
param retentionDays int = 30

@description('The floor: prune never deletes the newest this many usable backups of each HSM (RETENTION_MIN_KEEP).')
@minValue(1)
@maxValue(1000)
param retentionMinKeep int = 7

@description('When the prune timer deletes backup folders past the retention (PRUNE_SCHEDULE): six-field NCRONTAB, UTC.')
param pruneSchedule string = '0 30 3 * * *'

@description('Lifetime in minutes of the SAS the app signs per job (SAS_TTL_MINUTES).')
@minValue(5)
@maxValue(1440)
param sasTtlMinutes int = 120

@description('Managed HSM data-plane api-version (HSM_API_VERSION); managedIdentity mode needs 7.5 or later.')
@allowed([
  '7.2'
  '7.3'
  '7.4'
  '7.5'
  '7.6'
  '2025-06-01'
  '2025-07-01'
])
param hsmApiVersion string = '7.6'

@description('Blob container for the backups (BACKUP_CONTAINER).')
param backupContainerName string = 'mhsm-backups'

@description('Table that catalogs backups and restores (CATALOG_TABLE).')
param catalogTableName string = 'hsmbackups'

@description('''Replication of the backup account (BACKUP_STORAGE_SKU); the README compares their cost.
"Standard_ZRS" (default): three copies across the region's availability zones; survives a zone outage.
"Standard_GZRS" / "Standard_RAGZRS": ZRS plus an asynchronous copy in the paired region (RA: readable there).
"Standard_LRS" / "Standard_GRS" / "Standard_RAGRS": for regions without availability zones, where the ZRS kinds cannot be created.''')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_RAGRS'
  'Standard_GZRS'
  'Standard_RAGZRS'
])
param backupStorageSku string = 'Standard_ZRS'

@description('Days deleted or overwritten backup blobs and deleted containers stay recoverable (soft delete).')
@minValue(1)
@maxValue(365)
param softDeleteRetentionDays int = 30

@description('Put a CanNotDelete lock on the backup account. With it, `azd down` stops at the lock instead of deleting the backups.')
param lockBackupStorage bool = true

@description('''Immutable copies (see the README): 0 (default) = off. N > 0: a second storage account (the "vault") with version-level immutability keeps a copy of every succeeded backup, undeletable and unchangeable for N days, then deleted by a lifecycle rule. Not on the backup account itself: Managed HSM does not support a backup target with an immutability policy. Costs a second account and storage for N days of backups.''')
@minValue(0)
@maxValue(146000)
param backupImmutabilityDays int = 0

@description('Lock the vault\'s retention policy (only with backupImmutabilityDays > 0). Locked cannot be undone: nobody can shorten or remove the policy, and the account cannot be deleted while it holds protected copies. Unlocked (default): an administrator of the account can still shorten or disable it.')
param backupImmutabilityLocked bool = false

@description('Email address for the alerts; empty for none.')
param alertEmail string = ''

@description('Days Log Analytics keeps logs (backup history in the workbook reaches back this far).')
@minValue(30)
@maxValue(730)
param logRetentionDays int = 90

@description('Comma-separated object ids of the people who run the hsm-backup CLI against this deployment (OPERATOR_PRINCIPAL_IDS). Each gets what the CLI needs: here, the storage roles on the backup container, the catalog table and (SAS mode) the account; from the postprovision hook, Managed HSM Backup (and Restore when restoreEnabled) on each HSM. Empty: none. Removing an id later revokes nothing: see the README.')
param operatorPrincipalIds string = ''

@description('What every id in operatorPrincipalIds is (OPERATOR_PRINCIPAL_TYPE): "User" (default), "Group" or "ServicePrincipal". One kind for the whole list: to mix people and groups, put the people in a group.')
@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
param operatorPrincipalType string = 'User'

var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
}
var functionAppName = 'func-mhsm-${resourceToken}'
var appIdentityName = 'id-func-mhsm-${resourceToken}'
var hsmBackupIdentityName = hsmStorageAuth == 'managedIdentity' ? 'id-mhsm-backup-${resourceToken}' : ''
var logAnalyticsName = 'log-mhsm-${resourceToken}'
var applicationInsightsName = 'appi-mhsm-${resourceToken}'
var hostStorageName = 'stfunc${resourceToken}'
var backupStorageName = 'stbak${resourceToken}'
var deploymentContainerName = 'app-package-${resourceToken}'
var immutableCopies = backupImmutabilityDays > 0
var vaultStorageName = immutableCopies ? 'stvault${resourceToken}' : ''
// BACKUP_COPY_CONTAINER: empty (copies off) unless the vault exists.
var backupCopyContainerName = immutableCopies ? 'mhsm-backup-copies' : ''

var hsmUrls = filter(map(split(managedHsmUrls, ','), url => trim(url)), url => !empty(url))
// The app names an HSM by the first label of its host (src/lib/config.ts); the alert and the workbook
// list the HSMs that way.
var hsmNames = map(hsmUrls, url => split(split(url, '://')[1], '.')[0])
var hsmResourceIds = filter(map(split(managedHsmResourceIds, ','), id => trim(id)), id => !empty(id))

// Lower-cased and deduplicated (union): the same id twice would be two role assignments with one name.
var operatorIdList = union(
  map(filter(split(operatorPrincipalIds, ','), id => !empty(trim(id))), id => toLower(trim(id))),
  []
)
// An object id is a GUID; anything else would fail late, in the role assignments or in the hook.
var malformedOperatorIds = filter(operatorIdList, id => length(id) != 36 || length(split(id, '-')) != 5)
var operatorIds = empty(malformedOperatorIds)
  ? operatorIdList
  : fail('operatorPrincipalIds (OPERATOR_PRINCIPAL_IDS) must list object ids (GUIDs), comma-separated; not: ${join(malformedOperatorIds, ', ')}')

// fail() stops the deployment before anything is created: an HSM presenting a SAS is a public client.
var backupPublicNetworkAccess = hsmStorageAuth == 'sas' && backupStoragePublicNetworkAccess == 'Disabled'
  ? fail('backupStoragePublicNetworkAccess "Disabled" needs hsmStorageAuth "managedIdentity": an HSM presenting a SAS reaches storage over the public network.')
  : backupStoragePublicNetworkAccess

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: !empty(resourceGroupName) ? resourceGroupName : 'rg-${environmentName}'
  location: location
  tags: tags
}

// User-assigned rather than system-assigned: the HSM role assignments made by the postprovision hook
// live outside ARM and name this principal, so it must survive the app being deleted and re-created;
// it exists (with its storage roles) before the app first starts; and the *__clientId settings and
// the Flex deployment storage can name it.
module appIdentity 'app/identity.bicep' = {
  name: 'app-identity'
  scope: rg
  params: {
    location: location
    tags: tags
    name: appIdentityName
  }
}

module hsmBackupIdentity 'app/identity.bicep' = if (hsmStorageAuth == 'managedIdentity') {
  name: 'hsm-backup-identity'
  scope: rg
  params: {
    location: location
    tags: tags
    name: hsmBackupIdentityName
  }
}

module monitoring 'app/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    location: location
    tags: tags
    logAnalyticsName: logAnalyticsName
    applicationInsightsName: applicationInsightsName
    retentionInDays: logRetentionDays
  }
}

module hostStorage 'app/host-storage.bicep' = {
  name: 'host-storage'
  scope: rg
  params: {
    location: location
    tags: tags
    name: hostStorageName
    deploymentContainerName: deploymentContainerName
  }
}

module backupStorage 'app/backup-storage.bicep' = {
  name: 'backup-storage'
  scope: rg
  params: {
    location: location
    tags: tags
    name: backupStorageName
    skuName: backupStorageSku
    containerName: backupContainerName
    tableName: catalogTableName
    softDeleteRetentionDays: softDeleteRetentionDays
    versionRetentionDays: retentionDays + softDeleteRetentionDays
    publicNetworkAccess: backupPublicNetworkAccess
    lock: lockBackupStorage
  }
}

module vaultStorage 'app/vault-storage.bicep' = if (immutableCopies) {
  name: 'vault-storage'
  scope: rg
  params: {
    location: location
    tags: tags
    name: vaultStorageName
    skuName: backupStorageSku
    containerName: backupCopyContainerName
    // The module exists only when this is above 0; max() tells the compiler so.
    immutabilityDays: max(1, backupImmutabilityDays)
    immutabilityLocked: backupImmutabilityLocked
    publicNetworkAccess: backupPublicNetworkAccess
    lock: lockBackupStorage
  }
}

module rbac 'app/rbac.bicep' = {
  name: 'rbac'
  scope: rg
  params: {
    appIdentityName: appIdentityName
    hsmBackupIdentityName: hsmBackupIdentityName
    hsmStorageAuth: hsmStorageAuth
    hostStorageName: hostStorageName
    backupStorageName: backupStorageName
    backupContainerName: backupContainerName
    catalogTableName: catalogTableName
    applicationInsightsName: applicationInsightsName
    operatorPrincipalIds: operatorIds
    operatorPrincipalType: operatorPrincipalType
    vaultStorageName: vaultStorageName
    vaultContainerName: backupCopyContainerName
  }
  // Names are passed rather than outputs, so that what-if can predict the assignments' names.
  dependsOn: [
    appIdentity
    hsmBackupIdentity
    hostStorage
    backupStorage
    monitoring
    vaultStorage
  ]
}

module functionApp 'app/function-app.bicep' = {
  name: 'function-app'
  scope: rg
  params: {
    location: location
    tags: tags
    name: functionAppName
    planName: 'plan-mhsm-${resourceToken}'
    azdServiceName: 'api'
    identityId: appIdentity.outputs.id
    identityClientId: appIdentity.outputs.clientId
    hostStorageName: hostStorage.outputs.name
    hostBlobEndpoint: hostStorage.outputs.blobEndpoint
    deploymentContainerName: deploymentContainerName
    applicationInsightsConnectionString: monitoring.outputs.connectionString
    managedHsmUrls: join(hsmUrls, ',')
    backupBlobServiceUri: backupStorage.outputs.blobEndpoint
    backupTableServiceUri: backupStorage.outputs.tableEndpoint
    backupContainer: backupContainerName
    catalogTable: catalogTableName
    backupSchedule: backupSchedule
    sasTtlMinutes: sasTtlMinutes
    hsmApiVersion: hsmApiVersion
    hsmStorageAuth: hsmStorageAuth
    restoreEnabled: restoreEnabled
    healthMaxAgeHours: healthMaxAgeHours
    healthGraceHours: healthGraceHours
    deployedAt: graceStart
    hsmRequestTimeoutSeconds: hsmRequestTimeoutSeconds
    maxPollIntervalSeconds: maxPollIntervalSeconds
    jobTimeoutMinutes: jobTimeoutMinutes
    reconcileSchedule: reconcileSchedule
    backupConcurrency: backupConcurrency
    backupCopyContainer: backupCopyContainerName
    backupCopyBlobServiceUri: immutableCopies ? vaultStorage!.outputs.blobEndpoint : ''
    preflight: preflight
    retentionDays: retentionDays
    retentionMinKeep: retentionMinKeep
    pruneSchedule: pruneSchedule
  }
  // The app starts as soon as it exists: its roles on storage and telemetry should be in place first.
  dependsOn: [
    rbac
  ]
}

module alerts 'app/alerts.bicep' = {
  name: 'alerts'
  scope: rg
  params: {
    location: location
    tags: tags
    namePrefix: functionAppName
    applicationInsightsId: monitoring.outputs.applicationInsightsId
    alertEmail: alertEmail
    hsmNames: hsmNames
    backupMaxAgeHours: healthMaxAgeHours
    graceEndsEpoch: dateTimeToEpoch(graceStart) + healthGraceHours * 3600
    healthUrl: 'https://${functionApp.outputs.defaultHostName}/api/health'
  }
}

module workbook 'app/workbook.bicep' = {
  name: 'workbook'
  scope: rg
  params: {
    location: location
    tags: tags
    displayName: 'Managed HSM backups (${environmentName})'
    applicationInsightsName: applicationInsightsName
    logAnalyticsName: logAnalyticsName
    hsmNames: hsmNames
    backupMaxAgeHours: healthMaxAgeHours
  }
  // It refers to the component and the workspace by name.
  dependsOn: [
    monitoring
  ]
}

module hsmDiagnostics 'app/hsm-diagnostics.bicep' = [
  for (id, i) in hsmResourceIds: {
    name: 'hsm-audit-${resourceToken}-${i}'
    scope: resourceGroup(split(id, '/')[2], split(id, '/')[4])
    params: {
      hsmName: last(split(id, '/'))
      logAnalyticsId: monitoring.outputs.logAnalyticsId
      settingName: 'audit-to-log-mhsm-${resourceToken}'
    }
  }
]

output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = functionApp.outputs.name
output SERVICE_API_NAME string = functionApp.outputs.name
output SERVICE_API_URI string = 'https://${functionApp.outputs.defaultHostName}'
// Read by the postprovision hook (tools/grant-hsm-roles.ts).
output MANAGED_HSM_URLS string = join(hsmUrls, ',')
output FUNCTION_IDENTITY_PRINCIPAL_ID string = appIdentity.outputs.principalId
output FUNCTION_IDENTITY_CLIENT_ID string = appIdentity.outputs.clientId
output RESTORE_ENABLED string = restoreEnabled ? 'true' : 'false'
output HSM_BACKUP_IDENTITY_ID string = hsmStorageAuth == 'managedIdentity' ? hsmBackupIdentity!.outputs.id : ''
output BACKUP_STORAGE_ACCOUNT string = backupStorage.outputs.name
output BACKUP_COPY_STORAGE_ACCOUNT string = vaultStorageName
output APPLICATIONINSIGHTS_CONNECTION_STRING string = monitoring.outputs.connectionString
// Read by the postprovision hook: these principals get the HSM roles too.
output OPERATOR_PRINCIPAL_IDS string = join(operatorIds, ',')
// The app's own settings as the app has them (test/infra holds each to the app setting), so that
// `azd env get-values` gives the hsm-backup CLI the deployment's settings (README, "Run the CLI
// against the deployment"). Not BackupStorage__clientId: it names the app's identity, and an
// operator signs in as themselves. MANAGED_HSM_URLS, RESTORE_ENABLED: above.
output BackupStorage__blobServiceUri string = backupStorage.outputs.blobEndpoint
output BackupStorage__tableServiceUri string = backupStorage.outputs.tableEndpoint
output BACKUP_CONTAINER string = backupContainerName
output CATALOG_TABLE string = catalogTableName
output BACKUP_SCHEDULE string = backupSchedule
output SAS_TTL_MINUTES string = string(sasTtlMinutes)
output HSM_API_VERSION string = hsmApiVersion
output HSM_STORAGE_AUTH string = hsmStorageAuth
output HEALTH_MAX_AGE_HOURS string = string(healthMaxAgeHours)
output HSM_REQUEST_TIMEOUT_SECONDS string = string(hsmRequestTimeoutSeconds)
output MAX_POLL_INTERVAL_SECONDS string = string(maxPollIntervalSeconds)
output JOB_TIMEOUT_MINUTES string = string(jobTimeoutMinutes)
output RECONCILE_SCHEDULE string = reconcileSchedule
output BACKUP_CONCURRENCY string = string(backupConcurrency)
output HEALTH_GRACE_HOURS string = string(healthGraceHours)
output PREFLIGHT string = preflight ? 'true' : 'false'
output RETENTION_DAYS string = string(retentionDays)
output RETENTION_MIN_KEEP string = string(retentionMinKeep)
output PRUNE_SCHEDULE string = pruneSchedule
output DEPLOYED_AT string = graceStart
output BACKUP_COPY_CONTAINER string = backupCopyContainerName
output BackupCopyStorage__blobServiceUri string = immutableCopies ? vaultStorage!.outputs.blobEndpoint : ''
