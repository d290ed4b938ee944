// Trekker's reference Baileys worker: one WhatsApp bot under the process
// contract (docs/bot-process-contract.md).
//
// - Loads AUTH_DIR with useMultiFileAuthState: the node restores there the
//   whole session folder this worker (or an earlier run of it, on any node)
//   left behind, and saves it back to the database while it runs and when
//   it stops.
// - Reports {"event": "connected" | "disconnected" | "logged_out"} on stdout.
// - Saves the credentials on every update (Baileys' creds.update event).
// - Exits at stdin end-of-file (the node is gone) and on SIGTERM, after a
//   final save.
//
// Bot logic goes in onMessage below. Nothing here logs a secret.
'use strict'

// Files this worker (and Baileys) writes are the owner's only.
process.umask(0o077)

const fs = require('node:fs')
const path = require('node:path')
const {
  default: makeWASocket,
  useMultiFileAuthState,
  DisconnectReason,
  Browsers,
} = require('@whiskeysockets/baileys')

const AUTH_DIR = process.env.AUTH_DIR
if (!AUTH_DIR) {
  console.error('AUTH_DIR is not set: run me under a Trekker node (BOT_DRIVER=process)')
  process.exit(2)
}
// Quiet by default: Baileys' own logs go to stderr at warn, never to stdout
// (stdout carries the status lines).
const logger = require('pino')({ level: process.env.WORKER_LOG_LEVEL || 'warn' }, process.stderr)

// A small file of the worker's own, kept in the session folder like the
// rest: how many times this session has started. It shows that the folder
// survives restarts and moves (the node restores it before each start).
const WORKER_FILE = path.join(AUTH_DIR, 'trekker-worker.json')

function status(event, extra) {
  process.stdout.write(JSON.stringify({ event, ...extra }) + '\n')
}

function recordStart() {
  let starts = 0
  try {
    starts = JSON.parse(fs.readFileSync(WORKER_FILE, 'utf8')).starts || 0
  } catch {
    // First start of this session.
  }
  // Write-then-rename: the node may copy the folder at any moment.
  const temporary = `${WORKER_FILE}.tmp`
  fs.writeFileSync(temporary, JSON.stringify({ starts: starts + 1 }), { mode: 0o600 })
  fs.renameSync(temporary, WORKER_FILE)
  return starts + 1
}

async function onMessage(socket, message) {
  // Put the bot's logic here (or forward to your own service).
  void socket
  void message
}

let stopping = false
let saveCreds = async () => {}
let socket = null
let retry = 0

async function stop(code) {
  if (stopping) return
  stopping = true
  try {
    await saveCreds()
  } catch (error) {
    console.error(`final save failed: ${error.message}`)
  }
  try {
    socket?.end(undefined)
  } catch {
    // Already closed.
  }
  process.exit(code)
}

async function connect() {
  const auth = await useMultiFileAuthState(AUTH_DIR)
  saveCreds = auth.saveCreds
  socket = makeWASocket({
    auth: auth.state,
    logger,
    browser: Browsers.ubuntu('Trekker'),
    printQRInTerminal: false,
    markOnlineOnConnect: false,
  })
  socket.ev.on('creds.update', () => {
    saveCreds().catch((error) => console.error(`saving credentials failed: ${error.message}`))
  })
  socket.ev.on('messages.upsert', ({ messages }) => {
    for (const message of messages) {
      onMessage(socket, message).catch((error) => console.error(`bot logic failed: ${error.message}`))
    }
  })
  socket.ev.on('connection.update', ({ connection, lastDisconnect }) => {
    if (connection === 'open') {
      retry = 0
      status('connected')
      return
    }
    if (connection !== 'close' || stopping) return
    const code = lastDisconnect?.error?.output?.statusCode
    if (code === DisconnectReason.loggedOut) {
      status('logged_out')
      stop(40)
      return
    }
    const reason = lastDisconnect?.error?.message || 'connection closed'
    status('disconnected', { reason })
    // Capped exponential backoff; the node restarts us if we crash.
    retry += 1
    const delay = Math.min(60_000, 1000 * 2 ** Math.min(retry, 6))
    setTimeout(() => {
      if (!stopping) connect().catch((error) => fail(error))
    }, delay)
  })
}

function fail(error) {
  console.error(`worker failed: ${error.message}`)
  stop(1)
}

process.on('SIGTERM', () => stop(0))
process.on('SIGINT', () => stop(0))
// The node keeps stdin open and never writes to it: end-of-file means the
// node is gone. Exit at once (after saving), so no bot outlives its node.
process.stdin.on('end', () => stop(0))
process.stdin.resume()

const starts = recordStart()
console.error(`worker started (start ${starts} of this session)`)
connect().catch(fail)
