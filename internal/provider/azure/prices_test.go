package azure

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/spec"
)

// retailItem is one item of the Retail Prices API, in its documented shape.
func retailItem(sku, product string, price float64) string {
	return fmt.Sprintf(`{"currencyCode":"USD","tierMinimumUnits":0.0,"retailPrice":%g,"unitPrice":%g,"armRegionName":"westeurope",
		"location":"EU West","effectiveStartDate":"2024-05-01T00:00:00Z","meterId":"0","meterName":%q,"productId":"DZH318Z0BQ4J",
		"skuId":"DZH318Z0BQ4J/00G7","productName":%q,"skuName":%q,"serviceName":"Virtual Machines","serviceId":"DZH313Z7MMC8",
		"serviceFamily":"Compute","unitOfMeasure":"1 Hour","type":"Consumption","isPrimaryMeterRegion":true,"armSkuName":"Standard_NC4as_T4_v3"}`,
		price, price, sku, product, sku)
}

// TestSpotPriceFromRetailPrices: SpotPrice asks the Retail Prices API for
// the size in the scale set's region, follows NextPageLink, takes the
// Linux Spot meter (not Windows, not the regular or Low Priority one),
// caches it, and fails where the API does.
func TestSpotPriceFromRetailPrices(t *testing.T) {
	var calls atomic.Int32
	var fail atomic.Bool
	var srv *httptest.Server
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		if fail.Load() {
			http.Error(w, "unavailable", http.StatusServiceUnavailable)
			return
		}
		want := "serviceName eq 'Virtual Machines' and armRegionName eq 'westeurope' and armSkuName eq 'Standard_NC4as_T4_v3' and priceType eq 'Consumption'"
		if got := r.URL.Query().Get("$filter"); got != want {
			t.Errorf("$filter = %q, want %q", got, want)
		}
		w.Header().Set("Content-Type", "application/json")
		if r.URL.Query().Get("$skip") == "" {
			fmt.Fprintf(w, `{"BillingCurrency":"USD","CustomerEntityId":"Default","CustomerEntityType":"Retail","Items":[%s,%s],
				"NextPageLink":"%s?$filter=%s&$skip=100","Count":2}`,
				retailItem("NC4as T4 v3", "Virtual Machines NCasT4_v3 Series", 0.526),
				retailItem("NC4as T4 v3 Spot", "Virtual Machines NCasT4_v3 Series Windows", 0.21),
				srv.URL, strings.ReplaceAll(r.URL.Query().Get("$filter"), " ", "%20"))
			return
		}
		fmt.Fprintf(w, `{"BillingCurrency":"USD","CustomerEntityId":"Default","CustomerEntityType":"Retail","Items":[%s,%s],"NextPageLink":null,"Count":2}`,
			retailItem("NC4as T4 v3 Low Priority", "Virtual Machines NCasT4_v3 Series", 0.105),
			retailItem("NC4as T4 v3 Spot", "Virtual Machines NCasT4_v3 Series", 0.1578))
	}))
	defer srv.Close()
	p := pool(t, "gpu", spec.PrioritySpot, spec.EvictionDelete)
	e := newEnv(t, p)
	e.prov.cfg.PricesURL = srv.URL
	got, err := e.prov.SpotPrice(context.Background(), p, "1")
	if err != nil || got != 0.1578 {
		t.Fatalf("SpotPrice = %v, %v; want the Linux Spot meter's 0.1578", got, err)
	}
	if got, _ := e.prov.SpotPrice(context.Background(), p, "2"); got != 0.1578 || calls.Load() != 2 {
		t.Errorf("second read: %v after %d requests, want the cached price (two pages once)", got, calls.Load())
	}
	// Past the TTL it is read again (a running node's price follows the
	// cloud's, control.Plane.Reprice); a failed read is no price.
	e.now = e.now.Add(priceTTL + time.Second)
	if got, _ := e.prov.SpotPrice(context.Background(), p, "2"); got != 0.1578 || calls.Load() != 4 {
		t.Errorf("past the TTL: %v after %d requests, want the price read again", got, calls.Load())
	}
	fail.Store(true)
	q := p
	q.Spec.InstanceType = "Standard_NC8as_T4_v3"
	if _, err := e.prov.SpotPrice(context.Background(), q, ""); err == nil || !strings.Contains(err.Error(), "503") {
		t.Errorf("the API failing: %v", err)
	}
}
