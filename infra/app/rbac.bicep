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

@description('Object ids (GUIDs) of the operators who run the hsm-backup CLI against this deployment; empty: none.')
param operatorPrincipalIds array = []

@description('What every operator id is.')
@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
param operatorPrincipalType string = 'User'

@description('Name of the vault account of the immutable copies; empty when copies are off.')
param vaultStorageName string = ''

@description('Container of the immutable copies in the vault account; empty when copies are off.')
param vaultContainerName string = ''

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

// Operators: the hsm-backup CLI runs the app's own code with the operator's sign-in, so each operator
// gets exactly the app's backup-storage roles (above) and nothing on the host account or telemetry,
// which the CLI never touches. Their Managed HSM roles come from the postprovision hook.

// SAS mode: `hsm-backup backup` and `restore` sign the HSM's SAS with the operator's user-delegation key.
resource operatorBackupDelegator 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for id in operatorPrincipalIds: if (sasMode) {
    name: guid(backupStorage.id, id, storageBlobDelegatorRoleId)
    scope: backupStorage
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDelegatorRoleId)
      principalId: id
      principalType: operatorPrincipalType
    }
  }
]

// The SAS the operator signs grants at most what they hold here; reconcile lists the backup folders.
resource operatorBackupContainer 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for id in operatorPrincipalIds: {
    name: guid(backupStorage::blobServices::container.id, id, storageBlobDataContributorRoleId)
    scope: backupStorage::blobServices::container
    properties: {
      roleDefinitionId: subscriptionResourceId(
        'Microsoft.Authorization/roleDefinitions',
        storageBlobDataContributorRoleId
      )
      principalId: id
      principalType: operatorPrincipalType
    }
  }
]

// list and status read the catalog; backup, restore and reconcile write records.
resource operatorCatalogTable 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for id in operatorPrincipalIds: {
    name: guid(backupStorage::tableServices::table.id, id, storageTableDataContributorRoleId)
    scope: backupStorage::tableServices::table
    properties: {
      roleDefinitionId: subscriptionResourceId(
        'Microsoft.Authorization/roleDefinitions',
        storageTableDataContributorRoleId
      )
      principalId: id
      principalType: operatorPrincipalType
    }
  }
]

// Immutable copies: the app writes each backup folder into the vault container. Contributor on the one
// container, with a condition that takes away every delete: copying needs to create blobs (and read
// back their size), never to delete one. Expired copies are deleted by the vault's lifecycle rule,
// not by the app; the immutability policy refuses deletes of protected versions in any case.
var vaultCopies = !empty(vaultStorageName)

// Placeholder names when copies are off: ARM may still evaluate a skipped resource's id.
resource vaultStorage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = if (vaultCopies) {
  name: vaultCopies ? vaultStorageName : 'none'

  resource blobServices 'blobServices' existing = {
    name: 'default'

    resource container 'containers' existing = {
      name: vaultCopies ? vaultContainerName : 'none'
    }
  }
}

resource appVaultContainer 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (vaultCopies) {
  name: guid(vaultStorage::blobServices::container.id, appIdentity.id, storageBlobDataContributorRoleId)
  scope: vaultStorage::blobServices::container
  properties: {
    roleDefinitionId: subscriptionResourceId(
      'Microsoft.Authorization/roleDefinitions',
      storageBlobDataContributorRoleId
    )
    principalId: appIdentity.properties.principalId
    principalType: 'ServicePrincipal'
    description: 'Write immutable copies of the Managed HSM backups; never delete them.'
    conditionVersion: '2.0'
    // Deleting a version needs blobs/deleteBlobVersion/action, which Contributor does not grant.
    condition: '(!(ActionMatches{\'Microsoft.Storage/storageAccounts/blobServices/containers/blobs/delete\'}))'
  }
}
