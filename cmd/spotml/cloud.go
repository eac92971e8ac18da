package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v7"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/spf13/cobra"

	awsprov "github.com/spotml/spotml/internal/provider/aws"
	azureprov "github.com/spotml/spotml/internal/provider/azure"
	gcpprov "github.com/spotml/spotml/internal/provider/gcp"
)

// cloudFlags register the cloud VM providers in spotml server and up.
type cloudFlags struct {
	azure         bool
	aws           bool
	agentURL      string
	spotmlURL     string
	azureInterval time.Duration
	awsInterval   time.Duration
	gcp           bool
	gcpInterval   time.Duration
}

func (f *cloudFlags) bind(c *cobra.Command) {
	c.Flags().BoolVar(&f.azure, "azure", false, "run pools of provider azure as VMs of Azure VM Scale Sets (credentials: the Azure default credential chain: environment, workload identity, managed identity, az login)")
	c.Flags().StringVar(&f.agentURL, "cloud-agent-server-url", "", "the control plane's URL as cloud VMs reach it (e.g. https://spotml.example.com)")
	c.Flags().StringVar(&f.spotmlURL, "cloud-spotml-url", "", "URL cloud VMs download a linux spotml binary from at first boot (a blob or release URL)")
	c.Flags().DurationVar(&f.azureInterval, "azure-poll-interval", 15*time.Second, "how often the azure provider lists each scale set's VMs to see evictions")
	c.Flags().BoolVar(&f.aws, "aws", false, "run pools of provider aws as EC2 instances (credentials: the AWS default config chain: environment, ~/.aws, SSO, instance role)")
	c.Flags().DurationVar(&f.awsInterval, "aws-poll-interval", 15*time.Second, "how often the aws provider lists the pools' instances to see interruptions")
	c.Flags().BoolVar(&f.gcp, "gcp", false, "run pools of provider gcp as Compute Engine VMs (credentials: Application Default Credentials: GOOGLE_APPLICATION_CREDENTIALS, gcloud auth application-default login, the VM's service account)")
	c.Flags().DurationVar(&f.gcpInterval, "gcp-poll-interval", 15*time.Second, "how often the gcp provider lists the pools' VMs to see preemptions")
}

// check reports the first missing or wrong flag for the enabled clouds.
func (f *cloudFlags) check() error {
	if !f.azure && !f.aws && !f.gcp {
		return nil
	}
	with := "--azure"
	if !f.azure {
		with = "--aws"
	}
	if !f.azure && !f.aws {
		with = "--gcp"
	}
	for _, u := range []struct{ flag, val, what string }{
		{"--cloud-agent-server-url", f.agentURL, "the control plane's address as cloud VMs reach it"},
		{"--cloud-spotml-url", f.spotmlURL, "where VMs download a linux spotml binary"},
	} {
		if u.val == "" {
			return fmt.Errorf("%s: required with %s: %s", u.flag, with, u.what)
		}
		if p, err := url.Parse(u.val); err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" {
			return fmt.Errorf("%s: %q is not an http(s) URL", u.flag, u.val)
		}
	}
	if f.azure && f.azureInterval < time.Second {
		return errors.New("--azure-poll-interval: at least 1s (Azure Resource Manager limits reads per subscription)")
	}
	if f.aws && f.awsInterval < time.Second {
		return errors.New("--aws-poll-interval: at least 1s (EC2 throttles DescribeInstances)")
	}
	if f.gcp && f.gcpInterval < time.Second {
		return errors.New("--gcp-poll-interval: at least 1s (Compute Engine rate-limits read requests per project)")
	}
	return nil
}

// azureProvider builds the azure provider the flags describe.
func (f *cloudFlags) azureProvider(log *slog.Logger) (*azureprov.Provider, error) {
	if err := f.check(); err != nil {
		return nil, err
	}
	cred, err := azidentity.NewDefaultAzureCredential(nil)
	if err != nil {
		return nil, fmt.Errorf("--azure: Azure credentials: %w", err)
	}
	clients := func(sub string) (*armcompute.ClientFactory, error) {
		return armcompute.NewClientFactory(sub, cred, nil)
	}
	return azureprov.New(clients, azureprov.Config{
		ServerURL: strings.TrimSuffix(f.agentURL, "/"), SpotmlURL: f.spotmlURL, Interval: f.azureInterval,
	}, log, time.Now), nil
}

// awsProvider builds the aws provider the flags describe. Each region's
// client loads the default config chain when first used.
func (f *cloudFlags) awsProvider(log *slog.Logger) (*awsprov.Provider, error) {
	if err := f.check(); err != nil {
		return nil, err
	}
	clients := func(region string) (*ec2.Client, error) {
		cfg, err := awsconfig.LoadDefaultConfig(context.Background(), awsconfig.WithRegion(region))
		if err != nil {
			return nil, fmt.Errorf("AWS config: %w", err)
		}
		return ec2.NewFromConfig(cfg), nil
	}
	return awsprov.New(clients, awsprov.Config{
		ServerURL: strings.TrimSuffix(f.agentURL, "/"), SpotmlURL: f.spotmlURL, Interval: f.awsInterval,
	}, log, time.Now), nil
}

// gcpProvider builds the gcp provider the flags describe, with clients
// over Application Default Credentials, which must be found now.
func (f *cloudFlags) gcpProvider(ctx context.Context, log *slog.Logger) (*gcpprov.Provider, error) {
	if err := f.check(); err != nil {
		return nil, err
	}
	clients, err := gcpprov.NewClients(ctx)
	if err != nil {
		return nil, fmt.Errorf("--gcp: Application Default Credentials: %w; set GOOGLE_APPLICATION_CREDENTIALS to a service account key file, run gcloud auth application-default login, or run spotml on Google Cloud with a service account", err)
	}
	return gcpprov.New(clients, gcpprov.Config{
		ServerURL: strings.TrimSuffix(f.agentURL, "/"), SpotmlURL: f.spotmlURL, Interval: f.gcpInterval,
	}, log, time.Now), nil
}
