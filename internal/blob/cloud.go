package blob

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"gocloud.dev/blob"
	"gocloud.dev/blob/azureblob"
	"gocloud.dev/blob/gcsblob"
	"gocloud.dev/blob/s3blob"
	"gocloud.dev/gcerrors"
	"gocloud.dev/gcp"
	"google.golang.org/api/googleapi"
)

// Cloud object stores: s3://BUCKET/KEY, gs://BUCKET/KEY and
// azblob://CONTAINER/KEY, each through gocloud.dev's driver with the cloud's
// default credential chain. The URL's query holds the driver's own options
// (e.g. ?region=, ?endpoint=&use_path_style=true for an S3-compatible
// server, ?localemu=true&protocol=http&domain=HOST:PORT for Azurite); they
// travel with the bucket, so a path relative to a default store on S3 goes
// to the same endpoint. Credentials never go in the URL.
//
// How these stores differ from file://, and what the package does about it:
//   - A write is durable once it returns: a PUT, a completed multipart
//     upload (S3), a committed block list (Azure) or a finalized upload
//     (GCS) is stored redundantly before the service answers. A write whose
//     context ends first, or whose source fails, is never committed
//     (write cancels it), so no reader sees half an object.
//   - Large objects are streamed in parts (S3 multipart, Azure blocks, GCS
//     resumable chunks) with bounded buffers, never held whole in memory.
//   - There are no directories: a "directory" is a key prefix, and deleting
//     its objects deletes it. Zero-byte "dir/" marker objects, which
//     consoles and other tools create, are not objects here (listObjects
//     skips them).
//   - Reads, overwrites, deletes and listings are strongly consistent on all
//     three (S3 since December 2020, GCS and Azure always), which the
//     checkpoint's LATEST commit point relies on. Restore still follows a
//     LATEST that moves while it downloads.
//   - A bucket is opened once per Store and kept: opening one loads
//     credentials, which can take a round trip to a metadata service.

// cloudSchemes are the schemes whose buckets live in a cloud object store.
var cloudSchemes = map[string]bool{s3blob.Scheme: true, gcsblob.Scheme: true, azureblob.Scheme: true}

// isCloud reports whether scheme names a cloud object store.
func isCloud(scheme string) bool { return cloudSchemes[scheme] }

// bucketURL is the URL that opens the bucket r lives in: scheme, bucket
// and driver options, no key.
func (r ref) bucketURL() string {
	u := url.URL{Scheme: r.scheme, Host: r.host, RawQuery: r.query}
	return u.String()
}

// openCloud returns a bucket handle for r's cloud bucket, opening the bucket
// on first use. The caller closes the handle; the bucket stays open.
func (s *Store) openCloud(ctx context.Context, r ref) (*blob.Bucket, error) {
	key := r.bucketURL()
	s.mu.Lock()
	defer s.mu.Unlock()
	if b := s.cloud[key]; b != nil {
		return blob.NewBucket(sharedBucket{b}), nil
	}
	u, err := url.Parse(key)
	if err != nil {
		return nil, err
	}
	// The bucket outlives this call, so whatever its clients keep of the
	// context must not end with the caller's (a task's, say).
	ctx = context.WithoutCancel(ctx)
	var b *blob.Bucket
	switch r.scheme {
	case s3blob.Scheme:
		// A new opener each time: OpenBucketURL writes its options.
		b, err = (&s3blob.URLOpener{}).OpenBucketURL(ctx, u)
	case gcsblob.Scheme:
		b, err = openGCS(ctx, u)
	case azureblob.Scheme:
		b, err = openAzure(ctx, u)
	default:
		return nil, &SchemeError{Scheme: r.scheme}
	}
	if err != nil {
		return nil, fmt.Errorf("open %s: %w; %s", r.url(), err, cloudHint(r.scheme))
	}
	s.cloud[key] = b
	return blob.NewBucket(sharedBucket{b}), nil
}

// openGCS opens a gs:// bucket with Application Default Credentials, or
// with none for an emulator (STORAGE_EMULATOR_HOST, which gcsblob then
// talks to) or an anonymous=true URL. gcsblob's own default opener is not
// used: it prints a warning to stdout and carries on without credentials
// when there are none, and it caches the environment process-wide.
func openGCS(ctx context.Context, u *url.URL) (*blob.Bucket, error) {
	o := &gcsblob.URLOpener{}
	anon, _ := strconv.ParseBool(u.Query().Get("anonymous"))
	switch {
	case os.Getenv("STORAGE_EMULATOR_HOST") != "":
		// gcsblob uses an unauthenticated client for the emulator but
		// insists on being handed one.
		o.Client = &gcp.HTTPClient{}
	case anon || u.Query().Get("access_id") == "-":
	default:
		creds, err := gcp.DefaultCredentials(ctx)
		if err != nil {
			return nil, fmt.Errorf("no Google credentials: %w", err)
		}
		ts := gcp.CredentialsTokenSource(creds)
		if o.Client, err = gcp.NewHTTPClient(gcp.DefaultTransport(), ts); err != nil {
			return nil, err
		}
		o.TokenSource = ts
	}
	return o.OpenBucketURL(ctx, u)
}

// openAzure opens an azblob:// container with the account and credentials
// the environment names (azureblob.NewDefaultClient: a shared key, a SAS
// token, a connection string, or else the default Azure credential chain),
// read when the bucket is opened rather than once per process.
func openAzure(ctx context.Context, u *url.URL) (*blob.Bucket, error) {
	o := &azureblob.URLOpener{MakeClient: azureblob.NewDefaultClient, ServiceURLOptions: *azureblob.NewDefaultServiceURLOptions()}
	if o.ServiceURLOptions.SASToken != "" && u.RawQuery != "" {
		// The SAS token is appended to whatever service URL the query
		// makes; do not let a location send it to another host.
		return nil, errors.New("with AZURE_STORAGE_SAS_TOKEN set, an azblob URL cannot carry options (the token would go to the service they name); set AZURE_STORAGE_DOMAIN and AZURE_STORAGE_PROTOCOL instead")
	}
	return o.OpenBucketURL(ctx, u)
}

// cloudHint says where a scheme's credentials and options come from, for
// errors about a store that cannot be opened or reached.
func cloudHint(scheme string) string {
	switch scheme {
	case s3blob.Scheme:
		return "S3 credentials come from the AWS default chain (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or the instance's or pod's role), the region from AWS_REGION or ?region=; an S3-compatible server is named with ?endpoint=http://HOST:PORT&use_path_style=true"
	case gcsblob.Scheme:
		return "GCS credentials come from Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS, `gcloud auth application-default login`, or the VM's or pod's service account); an emulator is named with STORAGE_EMULATOR_HOST=HOST:PORT"
	case azureblob.Scheme:
		return "the Azure account comes from AZURE_STORAGE_ACCOUNT (or ?storage_account=), credentials from AZURE_STORAGE_KEY, AZURE_STORAGE_SAS_TOKEN, AZURE_STORAGE_CONNECTION_STRING or the default Azure credential chain (managed identity, workload identity, az login); Azurite is named with ?localemu=true&protocol=http&domain=HOST:PORT"
	}
	return ""
}

// explain adds to an error from a cloud location whose credentials were
// refused, or whose service could not be reached, where the credentials
// and endpoint come from. Other errors are returned as they are.
func (s *Store) explain(location string, err error) error {
	if err == nil {
		return nil
	}
	r, rerr := s.resolve(location)
	if rerr != nil || !isCloud(r.scheme) {
		return err
	}
	var ne net.Error
	if refused(err) || errors.As(err, &ne) {
		return fmt.Errorf("%w; %s", err, cloudHint(r.scheme))
	}
	return err
}

// refused reports whether the service turned the request down for its
// credentials (HTTP 401 or 403). gocloud.dev does not map every cloud's
// refusal to PermissionDenied (Azure's AuthorizationFailure is Unknown), so
// each SDK's own response error is asked too.
func refused(err error) bool {
	if gcerrors.Code(err) == gcerrors.PermissionDenied {
		return true
	}
	denied := func(code int) bool { return code == http.StatusUnauthorized || code == http.StatusForbidden }
	var az *azcore.ResponseError
	var g *googleapi.Error
	var aws interface{ HTTPStatusCode() int } // smithy-go's and the AWS SDK's response errors
	switch {
	case errors.As(err, &az):
		return denied(az.StatusCode)
	case errors.As(err, &g):
		return denied(g.Code)
	case errors.As(err, &aws):
		return denied(aws.HTTPStatusCode())
	}
	return false
}

// Check makes sure the default store can be used: for a cloud store, that
// its bucket opens, exists and can be listed with the credentials at hand.
// A file:// store was created by NewStore and a mem:// one always works.
func (s *Store) Check(ctx context.Context) error {
	if !isCloud(s.def.scheme) {
		return nil
	}
	b, err := s.root(ctx, s.def)
	if err != nil {
		return err
	}
	defer b.Close()
	_, _, err = b.ListPage(ctx, blob.FirstPageToken, 1, &blob.ListOptions{Prefix: s.def.key})
	switch {
	case err == nil:
		return nil
	case gcerrors.Code(err) == gcerrors.NotFound:
		return fmt.Errorf("blob store %s: bucket %q does not exist: create it, or name an existing one", s.defaultURL, s.def.host)
	default:
		return fmt.Errorf("blob store %s cannot be listed: %w; %s", s.defaultURL, err, cloudHint(s.def.scheme))
	}
}

// Close closes the cloud buckets the Store opened. The Store must not be
// used afterwards.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for k, b := range s.cloud {
		errs = append(errs, b.Close())
		delete(s.cloud, k)
	}
	return errors.Join(errs...)
}
