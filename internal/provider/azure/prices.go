package azure

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/spotml/spotml/internal/control"
	"github.com/spotml/spotml/internal/spec"
)

var _ control.Pricer = (*Provider)(nil)

// RetailPricesURL is the Azure Retail Prices API: public, unauthenticated
// JSON, prices in USD by default.
const RetailPricesURL = "https://prices.azure.com/api/retail/prices"

// priceTTL is how long a price read from the Retail Prices API is used.
const priceTTL = 15 * time.Minute

type cachedPrice struct {
	price float64
	at    time.Time
}

// retailPrices is one page of the Retail Prices API's answer.
type retailPrices struct {
	Items []struct {
		RetailPrice   float64 `json:"retailPrice"`
		UnitOfMeasure string  `json:"unitOfMeasure"`
		ArmRegionName string  `json:"armRegionName"`
		ArmSkuName    string  `json:"armSkuName"`
		SkuName       string  `json:"skuName"`
		ProductName   string  `json:"productName"`
		Type          string  `json:"type"`
	} `json:"Items"`
	NextPageLink string `json:"NextPageLink"`
}

// SpotPrice is the Retail Prices API's Linux Spot price per hour of the
// pool's VM size in its scale set's region (zone does not change it on
// Azure). It is cached for priceTTL.
func (p *Provider) SpotPrice(ctx context.Context, pool spec.Pool, zone string) (float64, error) {
	a := pool.Spec.Azure
	if a == nil {
		return 0, fmt.Errorf("pool %s: spec.azure is missing", pool.Metadata.Name)
	}
	f, err := p.factory(a.Subscription)
	if err != nil {
		return 0, err
	}
	ss, err := p.lookupScaleSet(ctx, f, pool)
	if err != nil {
		return 0, err
	}
	region := strings.ToLower(strings.ReplaceAll(ss.location, " ", ""))
	key := region + "/" + strings.ToLower(pool.Spec.InstanceType)
	p.mu.Lock()
	c, ok := p.prices[key]
	p.mu.Unlock()
	if ok && p.now().Sub(c.at) < priceTTL {
		return c.price, nil
	}
	base := p.cfg.PricesURL
	if base == "" {
		base = RetailPricesURL
	}
	client := p.cfg.HTTPClient
	if client == nil {
		client = &http.Client{Timeout: 20 * time.Second}
	}
	q := url.Values{"$filter": {fmt.Sprintf("serviceName eq 'Virtual Machines' and armRegionName eq '%s' and armSkuName eq '%s' and priceType eq 'Consumption'", region, pool.Spec.InstanceType)}}
	next := base + "?" + q.Encode()
	best := 0.0
	for page := 0; next != "" && page < 10; page++ {
		var doc retailPrices
		if err := getJSON(ctx, client, next, &doc); err != nil {
			return 0, err
		}
		for _, it := range doc.Items {
			// Spot meters end in " Spot"; Windows meters carry the
			// licence; Low Priority is Batch's older kind.
			if !strings.HasSuffix(it.SkuName, " Spot") || strings.Contains(it.ProductName, "Windows") ||
				it.Type != "Consumption" || it.UnitOfMeasure != "1 Hour" || !strings.EqualFold(it.ArmSkuName, pool.Spec.InstanceType) {
				continue
			}
			if best == 0 || (it.RetailPrice > 0 && it.RetailPrice < best) {
				best = it.RetailPrice
			}
		}
		next = doc.NextPageLink
	}
	if best <= 0 {
		return 0, fmt.Errorf("the Retail Prices API has no Linux Spot price for %s in %s", pool.Spec.InstanceType, region)
	}
	p.mu.Lock()
	p.prices[key] = cachedPrice{best, p.now()}
	p.mu.Unlock()
	return best, nil
}

func getJSON(ctx context.Context, client *http.Client, u string, into any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("azure retail prices: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return fmt.Errorf("azure retail prices: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("azure retail prices: GET %s: %s", u, resp.Status)
	}
	if err := json.Unmarshal(body, into); err != nil {
		return fmt.Errorf("azure retail prices: %w", err)
	}
	return nil
}
