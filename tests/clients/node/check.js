// ioredis and node-redis against redis-proxy: asserts results, not just the absence of errors.
//
// Usage: node check.js PORT
// Exits 0 and prints "ok ..." when every check passed; 1 with the failing check otherwise; 2 when the libraries are
// not installed (run `npm ci` in tests/clients/node; the CI does it in .ci/run).
"use strict";

let Redis, createClient;
try {
  Redis = require("ioredis");
  ({ createClient } = require("redis"));
} catch (error) {
  console.error(`ioredis/node-redis not installed (${error.message}): run npm ci in tests/clients/node`);
  process.exit(2);
}
const assert = require("node:assert/strict");

const port = Number(process.argv[2]);
const prefix = `node:${Date.now()}`;

async function ioredisChecks() {
  const p = `${prefix}:io`;
  // Auto-pipelining: concurrent commands are sent in one write.
  const redis = new Redis({ port, enableAutoPipelining: true, connectionName: "io-checker" });
  await Promise.all(Array.from({ length: 500 }, (_, i) => redis.set(`${p}:k${i}`, i)));
  const values = await Promise.all(Array.from({ length: 500 }, (_, i) => redis.get(`${p}:k${i}`)));
  assert.deepEqual(values, Array.from({ length: 500 }, (_, i) => String(i)), "auto-pipelined GETs");
  assert.equal(await redis.client("GETNAME"), "io-checker", "CLIENT GETNAME");

  // An explicit pipeline and a transaction.
  const piped = await redis.pipeline().set(`${p}:a`, "1").incr(`${p}:a`).get(`${p}:a`).exec();
  assert.deepEqual(piped, [[null, "OK"], [null, 2], [null, "2"]], "pipeline");
  const multi = await redis.multi().incr(`${p}:n`).incr(`${p}:n`).exec();
  assert.deepEqual(multi, [[null, 1], [null, 2]], "multi");

  // Pub/sub.
  const sub = new Redis({ port });
  const received = new Promise((resolve) => sub.on("message", (channel, message) => resolve([channel, message])));
  assert.equal(await sub.subscribe(`${p}:chan`), 1, "subscribe count");
  assert.equal(await redis.publish(`${p}:chan`, "hello"), 1, "one subscriber");
  assert.deepEqual(await received, [`${p}:chan`, "hello"], "message");

  // Blocking pop released by a push, and a script.
  const popped = redis.blpop(`${p}:queue`, 5);
  setTimeout(() => sub.duplicate().rpush(`${p}:queue`, "job").then(() => {}), 200);
  assert.deepEqual(await popped, [`${p}:queue`, "job"], "BLPOP");
  assert.equal(await redis.eval("return redis.call('INCRBY', KEYS[1], ARGV[1])", 1, `${p}:lua`, 5), 5, "EVAL");
  sub.disconnect();
  redis.disconnect();
}

async function nodeRedisChecks() {
  const p = `${prefix}:nr`;
  const options = { socket: { port, host: "127.0.0.1" }, name: "nr-checker" };
  const client = createClient(options);
  client.on("error", (error) => {
    console.error(`node-redis error: ${error}`);
    process.exit(1);
  });
  await client.connect();
  assert.equal(await client.ping(), "PONG");
  await Promise.all(Array.from({ length: 200 }, (_, i) => client.set(`${p}:k${i}`, String(i))));
  const values = await Promise.all(Array.from({ length: 200 }, (_, i) => client.get(`${p}:k${i}`)));
  assert.deepEqual(values, Array.from({ length: 200 }, (_, i) => String(i)), "node-redis GETs");
  assert.equal(await client.clientGetName(), "nr-checker", "CLIENT GETNAME");
  const pipelined = await client.multi().set(`${p}:a`, "1").incr(`${p}:a`).execAsPipeline();
  assert.deepEqual(pipelined, ["OK", 2], "pipeline");
  const multi = await client.multi().incr(`${p}:n`).incr(`${p}:n`).exec();
  assert.deepEqual(multi, [1, 2], "multi");

  const sub = client.duplicate();
  await sub.connect();
  const received = new Promise((resolve) => sub.subscribe(`${p}:chan`, (message) => resolve(message)));
  await new Promise((resolve) => setTimeout(resolve, 100));
  assert.equal(await client.publish(`${p}:chan`, "hello"), 1, "one subscriber");
  assert.equal(await received, "hello", "message");
  await sub.quit();

  const keys = [];
  for await (const key of client.scanIterator({ MATCH: `${p}:k*`, COUNT: 50 })) {
    keys.push(key);
  }
  assert.equal(new Set(keys).size, 200, "SCAN");
  await client.quit();
}

async function main() {
  const started = Date.now();
  await ioredisChecks();
  await nodeRedisChecks();
  const versions = `ioredis ${require("ioredis/package.json").version}, redis ${require("redis/package.json").version}`;
  console.log(`ok ${versions} in ${((Date.now() - started) / 1000).toFixed(1)}s`);
}

main().then(
  () => process.exit(0),
  (error) => {
    console.error(error);
    process.exit(1);
  },
);
