package aws

import (
	"context"
	"fmt"
	"strconv"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/spotml/spotml/internal/control"
	"github.com/spotml/spotml/internal/spec"
)

var _ control.Pricer = (*Provider)(nil)

// priceTTL is how long a Spot price read from EC2 is used before it is
// read again: EC2 changes Spot prices gradually, and
// DescribeSpotPriceHistory is throttled like every API.
const priceTTL = 5 * time.Minute

type cachedPrice struct {
	price float64
	at    time.Time
}

// SpotPrice is EC2's current Spot price of the pool's instance type for
// Linux: in zone, or the lowest of the region's zones when zone is empty
// (where the instance lands is EC2's choice). It is cached for priceTTL.
func (p *Provider) SpotPrice(ctx context.Context, pool spec.Pool, zone string) (float64, error) {
	a := pool.Spec.AWS
	if a == nil {
		return 0, fmt.Errorf("pool %s: spec.aws is missing", pool.Metadata.Name)
	}
	key := a.Region + "/" + pool.Spec.InstanceType + "/" + zone
	p.mu.Lock()
	c, ok := p.prices[key]
	p.mu.Unlock()
	if ok && p.now().Sub(c.at) < priceTTL {
		return c.price, nil
	}
	client, err := p.client(a.Region)
	if err != nil {
		return 0, err
	}
	out, err := client.DescribeSpotPriceHistory(ctx, &ec2.DescribeSpotPriceHistoryInput{
		InstanceTypes:       []types.InstanceType{types.InstanceType(pool.Spec.InstanceType)},
		ProductDescriptions: []string{"Linux/UNIX"},
		// A start time of now answers the price in effect now, per zone.
		StartTime: awssdk.Time(p.now()),
	})
	if err != nil {
		return 0, fmt.Errorf("describe spot price history of %s in %s: %w", pool.Spec.InstanceType, a.Region, err)
	}
	best := 0.0
	for _, h := range out.SpotPriceHistory {
		if zone != "" && awssdk.ToString(h.AvailabilityZone) != zone {
			continue
		}
		v, err := strconv.ParseFloat(awssdk.ToString(h.SpotPrice), 64)
		if err != nil || v <= 0 {
			continue
		}
		if best == 0 || v < best {
			best = v
		}
	}
	if best == 0 {
		return 0, fmt.Errorf("EC2 has no Spot price for %s in %s", pool.Spec.InstanceType, a.Region)
	}
	p.mu.Lock()
	p.prices[key] = cachedPrice{best, p.now()}
	p.mu.Unlock()
	return best, nil
}
