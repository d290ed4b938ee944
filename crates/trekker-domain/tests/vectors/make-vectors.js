// Makes xeddsa.json: XEdDSA signatures and signed WhatsApp device
// identities (ADV) made by curve25519-js, the curve library Baileys uses
// (through libsignal), so Trekker's Rust verifier is checked against an
// independent implementation. Deterministic: same output on every run.
//
//   npm ci --ignore-scripts && node make-vectors.js > xeddsa.json
'use strict';
const crypto = require('crypto');
const curve = require('curve25519-js');

const hex = (bytes) => Buffer.from(bytes).toString('hex');
const seed = (label) => new Uint8Array(crypto.createHash('sha256').update(label).digest());
const signBit = (signature) => (signature[63] & 0x80) >> 7;

// A protobuf varint and an ADVDeviceIdentity (rawId = 1, timestamp = 2,
// keyIndex = 3), as WhatsApp sends it in `account.details`.
function varint(value) {
  const out = [];
  let v = BigInt(value);
  do {
    let byte = Number(v & 0x7fn);
    v >>= 7n;
    if (v > 0n) byte |= 0x80;
    out.push(byte);
  } while (v > 0n);
  return out;
}
function details(rawId, timestamp, keyIndex) {
  return Uint8Array.from([0x08, ...varint(rawId), 0x10, ...varint(timestamp), 0x18, ...varint(keyIndex)]);
}

const signatures = [];
for (let i = 0; signatures.length < 16; i++) {
  const pair = curve.generateKeyPair(seed(`trekker-xeddsa-key-${i}`));
  const message = seed(`trekker-xeddsa-message-${i}`).subarray(0, 1 + (i * 7) % 32);
  const signature = curve.sign(pair.private, message);
  if (!curve.verify(pair.public, message, signature)) throw new Error('curve25519-js rejected its own signature');
  signatures.push({
    public: hex(pair.public),
    message: hex(message),
    signature: hex(signature),
    signBit: signBit(signature),
  });
}
for (const bit of [0, 1]) {
  if (!signatures.some((v) => v.signBit === bit)) throw new Error(`no vector with sign bit ${bit}`);
}

const accounts = [];
for (let i = 0; accounts.length < 6; i++) {
  const account = curve.generateKeyPair(seed(`trekker-adv-account-${i}`));
  const identity = curve.generateKeyPair(seed(`trekker-adv-identity-${i}`));
  const body = details(1000 + i, 1700000000 + i * 3600, i);
  const accountMessage = Uint8Array.from([6, 0, ...body, ...identity.public]);
  const deviceMessage = Uint8Array.from([6, 1, ...body, ...identity.public, ...account.public]);
  const accountSignature = curve.sign(account.private, accountMessage);
  const deviceSignature = curve.sign(identity.private, deviceMessage);
  accounts.push({
    accountPublic: hex(account.public),
    identityPrivate: hex(identity.private),
    identityPublic: hex(identity.public),
    details: hex(body),
    rawId: 1000 + i,
    timestamp: 1700000000 + i * 3600,
    keyIndex: i,
    accountSignature: hex(accountSignature),
    deviceSignature: hex(deviceSignature),
    accountSignBit: signBit(accountSignature),
    deviceSignBit: signBit(deviceSignature),
  });
}

process.stdout.write(JSON.stringify({ generator: 'curve25519-js@0.0.4', signatures, accounts }, null, 2) + '\n');
