// The Flex Consumption plan and the function app, with every app setting it runs with.
// The settings object below is the whole list: the app's own settings (SETTINGS in src/lib/config.ts)
// plus the platform settings named in platform-settings.json. test/infra checks both lists against it.

@description('Azure region of the plan and the app.')
param location string

@description('Tags for the plan and the app (the app also gets the azd-service-name tag).')
param tags object

@description('Name of the function app; also its host name prefix.')
param name string

@description('Name of the Flex Consumption plan.')
param planName string

@description('Service name in azure.yaml: azd finds the app to deploy to by this tag.')
param azdServiceName string

@description('Resource id of the app\'s user-assigned identity.')
param identityId string

@description('Client id of the app\'s user-assigned identity (named by the *__clientId settings).')
param identityClientId string

@description('Name of the host storage account (AzureWebJobsStorage).')
param hostStorageName string

@description('Blob endpoint of the host storage account, ending in "/".')
param hostBlobEndpoint string

@description('Container in the host storage account that Flex Consumption deploys the app package to.')
param deploymentContainerName string

@description('Application Insights connection string.')
param applicationInsightsConnectionString string

@description('Most instances the app may scale out to. Backups are a nightly singleton timer and restores are rare: the floor Flex Consumption allows is plenty.')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Memory per instance in MB.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('MANAGED_HSM_URLS: comma-separated base URLs of the HSMs to back up.')
param managedHsmUrls string

@description('BackupStorage__blobServiceUri: blob endpoint of the backup account.')
param backupBlobServiceUri string

@description('BackupStorage__tableServiceUri: table endpoint of the backup account.')
param backupTableServiceUri string

@description('BACKUP_CONTAINER: the backup container.')
param backupContainer string

@description('CATALOG_TABLE: the catalog table.')
param catalogTable string

@description('BACKUP_SCHEDULE: six-field NCRONTAB expression, in UTC (Flex Consumption ignores WEBSITE_TIME_ZONE).')
param backupSchedule string

@description('SAS_TTL_MINUTES: lifetime of the container SAS the app signs per job.')
param sasTtlMinutes int

@description('HSM_API_VERSION: Managed HSM data-plane api-version.')
param hsmApiVersion string

@description('HSM_STORAGE_AUTH: "sas" or "managedIdentity".')
param hsmStorageAuth string

@description('RESTORE_ENABLED: whether the restore endpoints accept requests.')
param restoreEnabled bool

@description('HEALTH_MAX_AGE_HOURS: /api/health answers 503 once an HSM\'s newest successful backup is older than this.')
param healthMaxAgeHours int

@description('HEALTH_GRACE_HOURS: an HSM never backed up is not stale until this long after DEPLOYED_AT.')
param healthGraceHours int

@description('DEPLOYED_AT: where that grace starts (UTC, ISO 8601).')
param deployedAt string

@description('HSM_REQUEST_TIMEOUT_SECONDS: timeout of each HSM or storage call.')
param hsmRequestTimeoutSeconds int

@description('MAX_POLL_INTERVAL_SECONDS: cap on any Retry-After the HSM asks for.')
param maxPollIntervalSeconds int

@description('JOB_TIMEOUT_MINUTES: a job still running after this long is recorded TimedOut.')
param jobTimeoutMinutes int

@description('RECONCILE_SCHEDULE: NCRONTAB (UTC) of the reconcile timer.')
param reconcileSchedule string

@description('BACKUP_CONCURRENCY: at most this many HSMs are backed up at once.')
param backupConcurrency int

@description('BACKUP_COPY_CONTAINER: the container of the immutable copies; empty when copies are off.')
param backupCopyContainer string

@description('BackupCopyStorage__blobServiceUri: blob endpoint of the vault account; empty when copies are off.')
param backupCopyBlobServiceUri string

@description('PREFLIGHT: whether each backup is preceded by the storage and HSM pre-backup checks.')
param preflight bool

@description('RETENTION_DAYS: prune deletes backup folders older than this many days.')
param retentionDays int

@description('RETENTION_MIN_KEEP: prune never deletes the newest this many usable backups of an HSM.')
param retentionMinKeep int

@description('PRUNE_SCHEDULE: NCRONTAB (UTC) of the prune timer.')
param pruneSchedule string

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

resource app 'Microsoft.Web/sites@2024-04-01' = {
  name: name
  location: location
  tags: union(tags, { 'azd-service-name': azdServiceName })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    siteConfig: {
      minTlsVersion: '1.2'
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${hostBlobEndpoint}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'node'
        version: '22'
      }
    }
  }

  resource appSettings 'config' = {
    name: 'appsettings'
    properties: {
      // Platform (platform-settings.json).
      AzureWebJobsStorage__accountName: hostStorageName
      AzureWebJobsStorage__credential: 'managedidentity'
      AzureWebJobsStorage__clientId: identityClientId
      APPLICATIONINSIGHTS_CONNECTION_STRING: applicationInsightsConnectionString
      APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
      // The app's own (SETTINGS in src/lib/config.ts). Not BackupStorage: a connection string is for
      // local development only; in Azure the identity-based form below is used.
      MANAGED_HSM_URLS: managedHsmUrls
      BackupStorage__blobServiceUri: backupBlobServiceUri
      BackupStorage__tableServiceUri: backupTableServiceUri
      BackupStorage__clientId: identityClientId
      BACKUP_CONTAINER: backupContainer
      CATALOG_TABLE: catalogTable
      BACKUP_SCHEDULE: backupSchedule
      SAS_TTL_MINUTES: string(sasTtlMinutes)
      HSM_API_VERSION: hsmApiVersion
      HSM_STORAGE_AUTH: hsmStorageAuth
      RESTORE_ENABLED: restoreEnabled ? 'true' : 'false'
      HEALTH_MAX_AGE_HOURS: string(healthMaxAgeHours)
      HEALTH_GRACE_HOURS: string(healthGraceHours)
      DEPLOYED_AT: deployedAt
      HSM_REQUEST_TIMEOUT_SECONDS: string(hsmRequestTimeoutSeconds)
      MAX_POLL_INTERVAL_SECONDS: string(maxPollIntervalSeconds)
      JOB_TIMEOUT_MINUTES: string(jobTimeoutMinutes)
      RECONCILE_SCHEDULE: reconcileSchedule
      BACKUP_CONCURRENCY: string(backupConcurrency)
      BACKUP_COPY_CONTAINER: backupCopyContainer
      BackupCopyStorage__blobServiceUri: backupCopyBlobServiceUri
      PREFLIGHT: preflight ? 'true' : 'false'
      RETENTION_DAYS: string(retentionDays)
      RETENTION_MIN_KEEP: string(retentionMinKeep)
      PRUNE_SCHEDULE: pruneSchedule
    }
  }
}

output id string = app.id
output name string = app.name
output defaultHostName string = app.properties.defaultHostName
