// Command cir-search calls the CIR retriever's Search: a reference image (or the id of a gallery image)
// changed as a text says, ranked against one collection.
//
// Build (GOPATH mode, Debian's golang-google-grpc-dev and golang-google-protobuf-dev; see deploy/README.md),
// after generating the stubs into gopath/ (git-ignored) with scripts/gen-client-stubs.sh:
//
//	cd clients/go && GO111MODULE=off GOPATH=$PWD/gopath:/usr/share/gocode go build -o bin/cir-search .
//
// Run:
//
//	bin/cir-search -address 127.0.0.1:50050 -collection demo -image samples/gallery/red-circle-dark.png \
//	    -text "the same shape in blue" -top-k 5 [-json]
//
// Environment, as for the cir command and the Python client: CIR_API_KEY (sent as metadata
// "authorization: Bearer <key>" when the retriever requires API keys), CIR_TLS_CA_FILE (TLS, trusting the CA in
// that PEM file; unset = plaintext), CIR_TLS_CERT_FILE and CIR_TLS_KEY_FILE (a client certificate, for mTLS).
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io/ioutil"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	commonv1 "cirsuite/gen/go/cir/common/v1"
	retrieverv1 "cirsuite/gen/go/cir/retriever/v1"
)

// Client-side round robin over every address the DNS name resolves to (a headless Kubernetes Service
// returns one per ready pod). The servers' max connection age makes the client re-resolve now and then.
const serviceConfig = `{"loadBalancingConfig": [{"round_robin": {}}]}`

const maxMessageBytes = 32 << 20

func main() {
	address := flag.String("address", "127.0.0.1:50050", "retriever host:port (a name is resolved with DNS: every replica is used)")
	collection := flag.String("collection", "", "collection to search (required)")
	image := flag.String("image", "", "reference image file")
	referenceID := flag.String("reference-id", "", "id of a gallery image to use as the reference (instead of -image)")
	text := flag.String("text", "", "how to change the reference, e.g. \"the same dress in red\" (required)")
	strategy := flag.String("strategy", "", "strategy name, e.g. cvsi, lincir, image_only (default: the server's)")
	topK := flag.Uint("top-k", 10, "results to return")
	timeout := flag.Duration("timeout", 120*time.Second, "deadline of the call")
	asJSON := flag.Bool("json", false, "print the whole response as JSON (protojson)")
	flag.Parse()

	if *collection == "" || *text == "" || (*image == "") == (*referenceID == "") {
		fmt.Fprintln(os.Stderr, "cir-search: -collection, -text and exactly one of -image / -reference-id are required")
		flag.Usage()
		os.Exit(2)
	}

	request := &retrieverv1.SearchRequest{
		Collection:       *collection,
		ModificationText: *text,
		TopK:             uint32(*topK),
	}
	if *image != "" {
		data, err := ioutil.ReadFile(*image)
		if err != nil {
			fail("reading the reference image: %v", err)
		}
		request.Reference = &retrieverv1.SearchRequest_ReferenceImage{
			ReferenceImage: &commonv1.Image{Source: &commonv1.Image_Data{Data: data}},
		}
	} else {
		request.Reference = &retrieverv1.SearchRequest_ReferenceId{ReferenceId: *referenceID}
	}
	if *strategy != "" {
		value, ok := retrieverv1.Strategy_value["STRATEGY_"+strings.ToUpper(*strategy)]
		if !ok {
			fail("unknown strategy %q", *strategy)
		}
		request.Strategy = retrieverv1.Strategy(value)
	}

	target := *address
	if !strings.Contains(target, ":///") {
		// grpc-go's default resolver passes the address through as one backend: ask for DNS instead.
		target = "dns:///" + target
	}
	conn, err := grpc.Dial(target,
		transportCredentials(),
		grpc.WithDefaultServiceConfig(serviceConfig),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMessageBytes), grpc.MaxCallSendMsgSize(maxMessageBytes)),
	)
	if err != nil {
		fail("connecting to %s: %v", target, err)
	}
	defer conn.Close()

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	if key := strings.TrimSpace(os.Getenv("CIR_API_KEY")); key != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+key)
	}
	var trailer metadata.MD
	response, err := retrieverv1.NewRetrieverServiceClient(conn).Search(ctx, request, grpc.Trailer(&trailer))
	if err != nil {
		st, _ := status.FromError(err)
		fail("Search failed: %s: %s", st.Code(), st.Message())
	}

	if *asJSON {
		out, err := protojson.Marshal(response)
		if err != nil {
			fail("encoding the response: %v", err)
		}
		fmt.Println(string(out))
		return
	}
	fmt.Printf("%d hits from %d images (request id %s, %s ms in the server)\n", len(response.Hits),
		response.CollectionSize, first(trailer.Get("x-request-id")), first(trailer.Get("x-cir-server-ms")))
	for rank, hit := range response.Hits {
		fmt.Printf("%3d. %-40s %8.4f  %s\n", rank+1, hit.Id, hit.Score, hit.Uri)
	}
	for _, d := range response.Degradations {
		fmt.Printf("degraded: %s: %s (%s)\n", d.Stage, d.Reason, d.Effect)
	}
}

// transportCredentials is TLS when CIR_TLS_CA_FILE names a CA (with CIR_TLS_CERT_FILE and CIR_TLS_KEY_FILE, a
// client certificate for mTLS), plaintext otherwise.
func transportCredentials() grpc.DialOption {
	caFile := os.Getenv("CIR_TLS_CA_FILE")
	certFile, keyFile := os.Getenv("CIR_TLS_CERT_FILE"), os.Getenv("CIR_TLS_KEY_FILE")
	if (certFile == "") != (keyFile == "") {
		fail("CIR_TLS_CERT_FILE and CIR_TLS_KEY_FILE go together: set both (mTLS) or neither")
	}
	if caFile == "" {
		if certFile != "" {
			fail("a client certificate needs TLS: set CIR_TLS_CA_FILE too")
		}
		return grpc.WithInsecure()
	}
	pem, err := ioutil.ReadFile(caFile)
	if err != nil {
		fail("CIR_TLS_CA_FILE: %v", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		fail("CIR_TLS_CA_FILE=%s: no PEM certificate in it", caFile)
	}
	config := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	if certFile != "" {
		pair, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			fail("CIR_TLS_CERT_FILE / CIR_TLS_KEY_FILE: %v", err)
		}
		config.Certificates = []tls.Certificate{pair}
	}
	return grpc.WithTransportCredentials(credentials.NewTLS(config))
}

func first(values []string) string {
	if len(values) == 0 {
		return "?"
	}
	return values[0]
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "cir-search: "+format+"\n", args...)
	os.Exit(1)
}
