package e2e

import (
	"testing"

	azureprov "github.com/spotml/spotml/internal/provider/azure"
	"github.com/spotml/spotml/internal/provider/cloudtest"
)

// TestApplyRefusesBadPool: `spotml apply` of an Azure pool with bad
// settings is refused by the control plane before anything is stored or
// asked of Azure, with an error naming each wrong field.
func TestApplyRefusesBadPool(t *testing.T) {
	cloud := startAzure(t)
	p := cloudtest.Listen(t)
	p.Start(azureprov.Name, cloud.provider(p, "https://blobs.example/spotml"))
	p.ApplyRefused(`apiVersion: spotml/v1
kind: Pool
metadata: {name: gpu}
spec:
  provider: azure
  priority: spot
  instanceType: Standard_D2s_v5
  zones: ["westeurope-1"]
  max: 2
  azure:
    subscription: my-sub
    resourceGroup: ml
    scaleSet: gpu
    image: ubuntu
    subnet: default
    sshPublicKey: ssh-ed25519 AAAA test
---
apiVersion: spotml/v1
kind: Pool
metadata: {name: od}
spec:
  provider: azure
  priority: ondemand
  instanceType: Standard_D2s_v5
  max: 2
  azure:
    subscription: 00000000-1111-2222-3333-444444444444
    resourceGroup: ml
    scaleSet: od
    image: Canonical:ubuntu-24_04-lts:server:latest
    subnet: /subscriptions/00000000-1111-2222-3333-444444444444/resourceGroups/ml/providers/Microsoft.Network/virtualNetworks/v/subnets/s
    sshPublicKey: ssh-ed25519 AAAA test
    prices: cloud
`, "spec.zones[0]", "spec.azure.subscription", "spec.azure.image", "spec.azure.subnet",
		`spec.azure.prices: "cloud" prices Spot nodes only`)
	if n := cloud.Calls("VirtualMachines.BeginCreateOrUpdate"); n != 0 || len(cloud.VMs()) != 0 {
		t.Errorf("a refused apply made %d VM creates", n)
	}
}
