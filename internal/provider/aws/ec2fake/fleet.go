package ec2fake

import (
	"encoding/xml"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Launch templates and instant fleets, as the EC2 API reference documents
// CreateLaunchTemplate, DeleteLaunchTemplate and CreateFleet: a fleet of
// type instant launches synchronously and answers the instances it made
// and, per launch template override it could not use, an error
// (InsufficientInstanceCapacity, SpotMaxPriceTooLow, …) in its errorSet,
// with the request itself succeeding.

// template is a launch template's one version: its data as RunInstances
// parameters (the LaunchTemplateData. prefix taken off).
type template struct {
	id, name string
	data     url.Values
}

// fleetResult is what an instant fleet answered, kept by client token so
// that a retried request gets the same answer.
type fleetResult struct {
	id       string
	instance *Instance
	errors   []fleetErrorXML
}

// Templates is how many launch templates exist.
func (e *EC2) Templates() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.templates)
}

type templateXML struct {
	ID      string `xml:"launchTemplateId"`
	Name    string `xml:"launchTemplateName"`
	Default int    `xml:"defaultVersionNumber"`
	Latest  int    `xml:"latestVersionNumber"`
	Created string `xml:"createTime"`
}

func (t *template) xml() templateXML {
	return templateXML{ID: t.id, Name: t.name, Default: 1, Latest: 1, Created: time.Now().UTC().Format(time.RFC3339)}
}

func (e *EC2) createLaunchTemplate(f map[string][]string) (any, *apiError) {
	name := get(f, "LaunchTemplateName")
	if len(name) < 3 || len(name) > 128 {
		return nil, &apiError{http.StatusBadRequest, "InvalidLaunchTemplateName.MalformedException", "A launch template name must be between 3 and 128 characters"}
	}
	for _, t := range e.templates {
		if t.name == name {
			return nil, &apiError{http.StatusBadRequest, "InvalidLaunchTemplateName.AlreadyExistsException",
				fmt.Sprintf("Launch template name already in use: %s", name)}
		}
	}
	data := url.Values{}
	for k, v := range f {
		if rest, ok := strings.CutPrefix(k, "LaunchTemplateData."); ok {
			data[rest] = v
		}
	}
	if get(data, "ImageId") == "" {
		return nil, &apiError{http.StatusBadRequest, "MissingParameter", "LaunchTemplateData.ImageId is required by this fake"}
	}
	e.next++
	t := &template{id: fmt.Sprintf("lt-%017x", e.next), name: name, data: data}
	e.templates[t.id] = t
	return struct {
		XMLName   xml.Name
		RequestID string      `xml:"requestId"`
		Template  templateXML `xml:"launchTemplate"`
	}{XMLName: xml.Name{Space: namespace, Local: "CreateLaunchTemplateResponse"}, RequestID: "req-" + t.id, Template: t.xml()}, nil
}

func (e *EC2) findTemplate(id, name string) *template {
	for _, t := range e.templates {
		if (id != "" && t.id == id) || (id == "" && t.name == name) {
			return t
		}
	}
	return nil
}

func (e *EC2) deleteLaunchTemplate(f map[string][]string) (any, *apiError) {
	t := e.findTemplate(get(f, "LaunchTemplateId"), get(f, "LaunchTemplateName"))
	if t == nil {
		return nil, &apiError{http.StatusBadRequest, "InvalidLaunchTemplateName.NotFoundException",
			"At least one of the launch templates specified in the request does not exist."}
	}
	delete(e.templates, t.id)
	return struct {
		XMLName   xml.Name
		RequestID string      `xml:"requestId"`
		Template  templateXML `xml:"launchTemplate"`
	}{XMLName: xml.Name{Space: namespace, Local: "DeleteLaunchTemplateResponse"}, RequestID: "req-delete-" + t.id, Template: t.xml()}, nil
}

type overridesXML struct {
	InstanceType string `xml:"instanceType"`
	SubnetID     string `xml:"subnetId"`
	MaxPrice     string `xml:"maxPrice,omitempty"`
}

type ltOverridesXML struct {
	Spec struct {
		ID      string `xml:"launchTemplateId"`
		Version string `xml:"version"`
	} `xml:"launchTemplateSpecification"`
	Overrides overridesXML `xml:"overrides"`
}

type fleetErrorXML struct {
	Code      string         `xml:"errorCode"`
	Message   string         `xml:"errorMessage"`
	Overrides ltOverridesXML `xml:"launchTemplateAndOverrides"`
	Lifecycle string         `xml:"lifecycle"`
}

type fleetInstanceXML struct {
	InstanceIDs  []string       `xml:"instanceIds>item"`
	InstanceType string         `xml:"instanceType"`
	Overrides    ltOverridesXML `xml:"launchTemplateAndOverrides"`
	Lifecycle    string         `xml:"lifecycle"`
}

// createFleet serves an instant fleet of one instance. Its candidates are
// the overrides (instance type × subnet) of its launch template configs;
// Spot ones are tried cheapest first (the price-capacity-optimized
// strategy, as far as a fake knows capacity: among the pools with
// capacity, the cheapest), On-Demand ones by On-Demand price
// (lowest-price). Pools without capacity become the fleet's errors.
func (e *EC2) createFleet(f map[string][]string) (any, *apiError) {
	bad := func(msg string) *apiError { return &apiError{http.StatusBadRequest, "InvalidParameterValue", msg} }
	if get(f, "Type") != "instant" {
		return nil, bad("this fake serves fleets of Type instant only")
	}
	if get(f, "TargetCapacitySpecification.TotalTargetCapacity") != "1" {
		return nil, bad("this fake makes one instance per fleet: TotalTargetCapacity must be 1")
	}
	lifecycle := get(f, "TargetCapacitySpecification.DefaultTargetCapacityType")
	switch lifecycle {
	case "spot":
		switch s := get(f, "SpotOptions.AllocationStrategy"); s {
		case "", "price-capacity-optimized", "lowest-price", "capacity-optimized":
		default:
			return nil, bad("unknown SpotOptions.AllocationStrategy " + s)
		}
	case "on-demand":
	default:
		return nil, &apiError{http.StatusBadRequest, "MissingParameter", "TargetCapacitySpecification.DefaultTargetCapacityType must be spot or on-demand"}
	}
	tok := get(f, "ClientToken")
	if r, ok := e.fleets[tok]; ok && tok != "" {
		return fleetResponse(r, lifecycle), nil
	}
	type candidate struct {
		t     *template
		over  overridesXML
		price float64
		order int
	}
	var cands []candidate
	for i := 1; ; i++ {
		p := fmt.Sprintf("LaunchTemplateConfigs.%d.", i)
		id, name := get(f, p+"LaunchTemplateSpecification.LaunchTemplateId"), get(f, p+"LaunchTemplateSpecification.LaunchTemplateName")
		if id == "" && name == "" {
			if i == 1 {
				return nil, &apiError{http.StatusBadRequest, "MissingParameter", "LaunchTemplateConfigs.1.LaunchTemplateSpecification is required"}
			}
			break
		}
		t := e.findTemplate(id, name)
		if t == nil {
			return nil, &apiError{http.StatusBadRequest, "InvalidLaunchTemplateName.NotFoundException",
				"The specified launch template, with template name " + name + ", does not exist."}
		}
		for j := 1; ; j++ {
			q := fmt.Sprintf("%sOverrides.%d.", p, j)
			typ, subnet := get(f, q+"InstanceType"), get(f, q+"SubnetId")
			if typ == "" && subnet == "" {
				break
			}
			if typ == "" {
				typ = get(t.data, "InstanceType")
			}
			o := overridesXML{InstanceType: typ, SubnetID: subnet, MaxPrice: get(f, q+"MaxPrice")}
			price := e.odPrice[typ]
			if lifecycle == "spot" {
				price = e.spotPrice[typ]
			}
			cands = append(cands, candidate{t, o, price, len(cands)})
		}
	}
	if len(cands) == 0 {
		return nil, &apiError{http.StatusBadRequest, "MissingParameter", "no launch template overrides"}
	}
	sort.SliceStable(cands, func(i, j int) bool { return cands[i].price < cands[j].price })
	e.next++
	r := fleetResult{id: fmt.Sprintf("fleet-%08x-0000-4000-8000-%012x", e.next, e.next)}
	for _, c := range cands {
		form := url.Values{}
		for k, v := range c.t.data {
			form[k] = v
		}
		form.Set("InstanceType", c.over.InstanceType)
		form.Set("SubnetId", c.over.SubnetID)
		if lifecycle == "spot" {
			form.Set("InstanceMarketOptions.MarketType", "spot")
			form.Set("InstanceMarketOptions.SpotOptions.SpotInstanceType", "one-time")
			if b := get(f, "SpotOptions.InstanceInterruptionBehavior"); b != "" {
				form.Set("InstanceMarketOptions.SpotOptions.InstanceInterruptionBehavior", b)
			}
			if c.over.MaxPrice != "" {
				form.Set("InstanceMarketOptions.SpotOptions.MaxPrice", c.over.MaxPrice)
			}
		}
		// The fleet's own instance tags join the template's.
		n := 1
		for ; ; n++ {
			if _, ok := form[fmt.Sprintf("TagSpecification.%d.ResourceType", n)]; !ok {
				break
			}
		}
		for i := 1; ; i++ {
			src := fmt.Sprintf("TagSpecification.%d.", i)
			rt := get(f, src+"ResourceType")
			if rt == "" {
				break
			}
			if rt != "instance" {
				continue
			}
			dst := fmt.Sprintf("TagSpecification.%d.", n)
			n++
			for k, v := range f {
				if rest, ok := strings.CutPrefix(k, src); ok {
					form[dst+rest] = v
				}
			}
		}
		lo := ltOverridesXML{Overrides: c.over}
		lo.Spec.ID, lo.Spec.Version = c.t.id, "1"
		in, err := e.launch(form)
		if err != nil {
			r.errors = append(r.errors, fleetErrorXML{Code: err.code, Message: err.message, Overrides: lo, Lifecycle: lifecycle})
			continue
		}
		in.ClientToken = tok
		r.instance = in
		break
	}
	if tok != "" {
		e.fleets[tok] = r
	}
	return fleetResponse(r, lifecycle), nil
}

func fleetResponse(r fleetResult, lifecycle string) any {
	doc := struct {
		XMLName   xml.Name
		RequestID string             `xml:"requestId"`
		FleetID   string             `xml:"fleetId"`
		Errors    []fleetErrorXML    `xml:"errorSet>item"`
		Instances []fleetInstanceXML `xml:"fleetInstanceSet>item"`
	}{XMLName: xml.Name{Space: namespace, Local: "CreateFleetResponse"}, RequestID: "req-" + r.id, FleetID: r.id, Errors: r.errors}
	if in := r.instance; in != nil {
		fi := fleetInstanceXML{InstanceIDs: []string{in.ID}, InstanceType: in.Type, Lifecycle: lifecycle}
		fi.Overrides.Overrides = overridesXML{InstanceType: in.Type, SubnetID: in.Subnet, MaxPrice: in.MaxPrice}
		doc.Instances = []fleetInstanceXML{fi}
	}
	return doc
}

// describeSpotPriceHistory answers the current Spot price of each asked
// instance type (all priced types if none) in each zone of the region's
// subnets, as of the last hour.
func (e *EC2) describeSpotPriceHistory(f map[string][]string) (any, *apiError) {
	types := list(f, "InstanceType")
	if len(types) == 0 {
		for t := range e.spotPrice {
			types = append(types, t)
		}
		sort.Strings(types)
	}
	zones := map[string]bool{}
	for _, z := range e.subnets {
		zones[z] = true
	}
	var zs []string
	for z := range zones {
		zs = append(zs, z)
	}
	sort.Strings(zs)
	type itemXML struct {
		InstanceType string `xml:"instanceType"`
		Product      string `xml:"productDescription"`
		SpotPrice    string `xml:"spotPrice"`
		Timestamp    string `xml:"timestamp"`
		Zone         string `xml:"availabilityZone"`
	}
	doc := struct {
		XMLName   xml.Name
		RequestID string    `xml:"requestId"`
		Items     []itemXML `xml:"spotPriceHistorySet>item"`
		NextToken string    `xml:"nextToken"`
	}{XMLName: xml.Name{Space: namespace, Local: "DescribeSpotPriceHistoryResponse"}, RequestID: "req-spot-prices"}
	at := time.Now().UTC().Add(-time.Hour).Truncate(time.Second).Format(time.RFC3339)
	for _, t := range types {
		p, ok := e.spotPrice[t]
		if !ok {
			continue
		}
		for _, z := range zs {
			doc.Items = append(doc.Items, itemXML{t, "Linux/UNIX", strconv.FormatFloat(p, 'f', 6, 64), at, z})
		}
	}
	return doc, nil
}
