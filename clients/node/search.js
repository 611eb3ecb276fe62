#!/usr/bin/env node
// Calls the CIR retriever's Search with @grpc/grpc-js, loading the contracts from protos/ at run time with
// @grpc/proto-loader (no code generation). Typed TypeScript stubs for the same contracts go to gen/
// (git-ignored; scripts/gen-client-stubs.sh).
//
//   node search.js --address 127.0.0.1:50050 --collection demo \
//       --image ../../samples/gallery/red-circle-dark.png --text "the same shape in blue" --top-k 5 [--json]
//
// Environment, as for the cir command and the Python client: CIR_API_KEY (sent as metadata
// "authorization: Bearer <key>" when the retriever requires API keys), CIR_TLS_CA_FILE (TLS, trusting the CA in
// that PEM file; unset = plaintext), CIR_TLS_CERT_FILE and CIR_TLS_KEY_FILE (a client certificate, for mTLS).
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const { parseArgs } = require('node:util');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const MAX_MESSAGE_BYTES = 32 * 1024 * 1024;

const USAGE = `usage: search.js --collection NAME --text TEXT (--image FILE | --reference-id ID)
                 [--address HOST:PORT] [--strategy NAME] [--top-k N] [--timeout SECONDS] [--json] [--protos DIR]
environment: CIR_API_KEY, CIR_TLS_CA_FILE, CIR_TLS_CERT_FILE + CIR_TLS_KEY_FILE (mTLS)`;

function parse() {
  const { values } = parseArgs({
    options: {
      address: { type: 'string', default: process.env.CIR_RETRIEVER_ADDRESS || '127.0.0.1:50050' },
      collection: { type: 'string' },
      image: { type: 'string' },
      'reference-id': { type: 'string' },
      text: { type: 'string' },
      strategy: { type: 'string' },
      'top-k': { type: 'string', default: '10' },
      timeout: { type: 'string', default: '120' },
      json: { type: 'boolean', default: false },
      protos: { type: 'string', default: process.env.CIR_PROTOS_DIR || path.resolve(__dirname, '..', '..', 'protos') },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    console.log(USAGE);
    process.exit(0);
  }
  if (!values.collection || !values.text || !values.image === !values['reference-id']) {
    console.error(`search.js: --collection, --text and exactly one of --image / --reference-id are required\n${USAGE}`);
    process.exit(2);
  }
  return values;
}

function fail(message) {
  console.error(`search.js: ${message}`);
  process.exit(2);
}

// TLS when CIR_TLS_CA_FILE names a CA (with CIR_TLS_CERT_FILE and CIR_TLS_KEY_FILE, a client certificate for
// mTLS), plaintext otherwise.
function channelCredentials() {
  const { CIR_TLS_CA_FILE: caFile, CIR_TLS_CERT_FILE: certFile, CIR_TLS_KEY_FILE: keyFile } = process.env;
  if (!certFile !== !keyFile) fail('CIR_TLS_CERT_FILE and CIR_TLS_KEY_FILE go together: set both (mTLS) or neither');
  if (!caFile) {
    if (certFile) fail('a client certificate needs TLS: set CIR_TLS_CA_FILE too');
    return grpc.credentials.createInsecure();
  }
  const read = (variable, file) => {
    try {
      return fs.readFileSync(file);
    } catch (error) {
      return fail(`${variable}=${file}: cannot read it: ${error.message}`);
    }
  };
  return grpc.credentials.createSsl(
    read('CIR_TLS_CA_FILE', caFile),
    keyFile ? read('CIR_TLS_KEY_FILE', keyFile) : null,
    certFile ? read('CIR_TLS_CERT_FILE', certFile) : null,
  );
}

// The call's metadata: the API key (CIR_API_KEY) when one is set.
function callMetadata() {
  const metadata = new grpc.Metadata();
  const key = (process.env.CIR_API_KEY || '').trim();
  if (key) metadata.set('authorization', `Bearer ${key}`);
  return metadata;
}

function retrieverClient(protosDir, address) {
  const definition = protoLoader.loadSync('cir/retriever/v1/retriever.proto', {
    includeDirs: [protosDir],
    keepCase: false, // fields in lowerCamelCase, as in the proto3 JSON mapping
    longs: String, // uint64 counts stay exact
    enums: String,
    defaults: false,
    oneofs: true,
  });
  const { RetrieverService } = grpc.loadPackageDefinition(definition).cir.retriever.v1;
  return new RetrieverService(address, channelCredentials(), {
    // A DNS name (e.g. a headless Kubernetes Service) resolves to every replica; round_robin spreads calls
    // over all of them, and the servers' max connection age makes the client re-resolve from time to time.
    'grpc.service_config': JSON.stringify({ loadBalancingConfig: [{ round_robin: {} }] }),
    'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
    'grpc.max_send_message_length': MAX_MESSAGE_BYTES,
  });
}

function main() {
  const args = parse();
  const request = {
    collection: args.collection,
    modificationText: args.text,
    topK: Number.parseInt(args['top-k'], 10),
  };
  if (args.image) {
    request.referenceImage = { data: fs.readFileSync(args.image) };
  } else {
    request.referenceId = args['reference-id'];
  }
  if (args.strategy) {
    request.strategy = `STRATEGY_${args.strategy.toUpperCase()}`;
  }

  const client = retrieverClient(args.protos, args.address);
  const deadline = new Date(Date.now() + Number.parseFloat(args.timeout) * 1000);
  // The callback gets the answer, the 'status' event the trailing metadata: print once both have come.
  let outcome = null;
  let trailer = null;
  const finish = () => {
    if (outcome === null || trailer === null) return;
    client.close();
    const [error, response] = outcome;
    if (error) {
      console.error(`search.js: Search failed: ${grpc.status[error.code]}: ${error.details}`);
      process.exitCode = 1;
      return;
    }
    if (args.json) {
      console.log(JSON.stringify(response));
      return;
    }
    const get = (key) => trailer.get(key)[0] || '?';
    console.log(`${response.hits.length} hits from ${response.collectionSize} images ` +
      `(request id ${get('x-request-id')}, ${get('x-cir-server-ms')} ms in the server)`);
    response.hits.forEach((hit, rank) => {
      console.log(`${String(rank + 1).padStart(3)}. ${hit.id.padEnd(40)} ${hit.score.toFixed(4).padStart(8)}  ${hit.uri || ''}`);
    });
    for (const d of response.degradations || []) {
      console.log(`degraded: ${d.stage}: ${d.reason} (${d.effect})`);
    }
  };
  const call = client.Search(request, callMetadata(), { deadline }, (error, response) => {
    outcome = [error, response];
    finish();
  });
  call.on('status', (status) => {
    trailer = status.metadata;
    finish();
  });
}

main();
