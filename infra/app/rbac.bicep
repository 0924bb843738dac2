// Every Azure RBAC role assignment of the deployment, each at the narrowest scope that works.
// (The HSM's own local roles, Managed HSM Backup/Restore, cannot be assigned through ARM: the azd
// postprovision hook tools/grant-hsm-roles.ts grants them.)

@description('Name of the function app\'s user-assigned identity.')
param appIdentityName string

@description('Name of the user-assigned identity the HSMs use to reach storage in managed-identity mode; empty in SAS mode.')
param hsmBackupIdentityName string

@description('"sas": the app signs user-delegation SAS tokens for the HSM; "managedIdentity": the HSM\'s own identity writes and reads the backups.')
@allowed([
  'sas'
  'managedIdentity'
])
param hsmStorageAuth string

@description('Name of the host storage account (AzureWebJobsStorage).')
param hostStorageName string

@description('Name of the backup storage account.')
param backupStorageName string

@description('Backup container in the backup account.')
param backupContainerName string

@description('Catalog table in the backup account.')
param catalogTableName string

@description('Name of the Application Insights component.')
param applicationInsightsName string

// Built-in Azure role definition ids.
var storageBlobDataOwnerRoleId = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b' // Storage Blob Data Owner
var storageBlobDataContributorRoleId = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe' // Storage Blob Data Contributor
var storageBlobDelegatorRoleId = 'db58b8e5-c6ad-4a2a-8342-4190687cbf4a' // Storage Blob Delegator
var storageTableDataContributorRoleId = '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3' // Storage Table Data Contributor
var monitoringMetricsPublisherRoleId = '3913510d-42f4-4e42-8a64-420c390055eb' // Monitoring Metrics Publisher

var sasMode = hsmStorageAuth == 'sas'

resource appIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' existing = {
  name: appIdentityName
}

resource hsmBackupIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' existing = if (!sasMode) {
  name: hsmBackupIdentityName
}

resource hostStorage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: hostStorageName
}

resource backupStorage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: backupStorageName

  resource blobServices 'blobServices' existing = {
    name: 'default'

    resource container 'containers' existing = {
      name: backupContainerName
    }
  }

  resource tableServices 'tableServices' existing = {
    name: 'default'

    resource table 'tables' existing = {
      name: catalogTableName
    }
  }
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

// Host storage: the Functions host keeps timer leases and keys in blobs, and Flex Consumption reads
// the app package from a container there. Owner is what the host documents for identity-based
// AzureWebJobsStorage (it manages the blob leases it creates).
resource appHostStorage 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(hostStorage.id, appIdentity.id, storageBlobDataOwnerRoleId)
  scope: hostStorage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataOwnerRoleId)
    principalId: appIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// SAS mode: a user-delegation key is requested from the blob service as a whole, so the Delegator
// role only works at account scope. It grants no data access by itself.
resource appBackupDelegator 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (sasMode) {
  name: guid(backupStorage.id, appIdentity.id, storageBlobDelegatorRoleId)
  scope: backupStorage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDelegatorRoleId)
    principalId: appIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// Scoped to the one container. A user-delegation SAS grants at most what its signer may do: the
// backup SAS (crdw) needs the app to hold write and delete there. The app also checks the container
// exists (createIfNotExists) before every run, in both modes, and prune deletes the blobs of old
// backup folders (blobs/delete): the narrowest built-in role that has delete.
resource appBackupContainer 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(backupStorage::blobServices::container.id, appIdentity.id, storageBlobDataContributorRoleId)
  scope: backupStorage::blobServices::container
  properties: {
    roleDefinitionId: subscriptionResourceId(
      'Microsoft.Authorization/roleDefinitions',
      storageBlobDataContributorRoleId
    )
    principalId: appIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// Scoped to the one table: the catalog (the app also creates it if missing, before every run).
resource appCatalogTable 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(backupStorage::tableServices::table.id, appIdentity.id, storageTableDataContributorRoleId)
  scope: backupStorage::tableServices::table
  properties: {
    roleDefinitionId: subscriptionResourceId(
      'Microsoft.Authorization/roleDefinitions',
      storageTableDataContributorRoleId
    )
    principalId: appIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// Application Insights has local auth off: publishing telemetry needs this role.
resource appTelemetry 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(applicationInsights.id, appIdentity.id, monitoringMetricsPublisherRoleId)
  scope: applicationInsights
  properties: {
    roleDefinitionId: subscriptionResourceId(
      'Microsoft.Authorization/roleDefinitions',
      monitoringMetricsPublisherRoleId
    )
    principalId: appIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// Managed-identity mode: the HSM's user-assigned identity writes and reads the backup folders itself.
// The Managed HSM documentation asks for this role on the storage account.
resource hsmBackupStorage 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!sasMode) {
  name: guid(backupStorage.id, hsmBackupIdentity.id, storageBlobDataContributorRoleId)
  scope: backupStorage
  properties: {
    roleDefinitionId: subscriptionResourceId(
      'Microsoft.Authorization/roleDefinitions',
      storageBlobDataContributorRoleId
    )
    principalId: hsmBackupIdentity!.properties.principalId
    principalType: 'ServicePrincipal'
  }
}
