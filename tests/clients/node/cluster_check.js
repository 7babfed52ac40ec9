// ioredis's and node-redis's plain clients (not their cluster clients) against redis-proxy in cluster mode: keys
// over many slots, multi-key commands the proxy splits by slot, pipelines, a transaction, SCAN, pub/sub and sharded
// pub/sub, as if the proxy were one server. Asserts results, not just the absence of errors.
//
// Usage: node cluster_check.js PORT
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
const prefix = `ncluster:${Date.now()}`;

async function ioredisChecks() {
  const p = `${prefix}:io`;
  const redis = new Redis({ port, enableAutoPipelining: true });
  // 500 keys, about 500 slots over every primary, auto-pipelined.
  await Promise.all(Array.from({ length: 500 }, (_, i) => redis.set(`${p}:k${i}`, i)));
  const values = await Promise.all(Array.from({ length: 500 }, (_, i) => redis.get(`${p}:k${i}`)));
  assert.deepEqual(values, Array.from({ length: 500 }, (_, i) => String(i)), "auto-pipelined GETs");

  // Multi-key commands across slots, split and merged by the proxy.
  const keys = Array.from({ length: 100 }, (_, i) => `${p}:k${i}`);
  assert.deepEqual(await redis.mget(...keys, `${p}:missing`), [...keys.map((_, i) => String(i)), null], "MGET");
  assert.equal(await redis.mset(Object.fromEntries(keys.map((k) => [k, "m"]))), "OK", "MSET");
  assert.equal(await redis.exists(...keys, `${p}:missing`), 100, "EXISTS");
  assert.equal(await redis.del(...keys.slice(0, 50)), 50, "DEL");
  await assert.rejects(redis.rename(`${p}:k60`, `${p}:k61`), /CROSSSLOT/, "RENAME across slots");

  // A pipeline over many slots, and a transaction on one slot (a hash tag).
  const piped = await redis.pipeline().set(`${p}:a`, "1").incr(`${p}:a`).get(`${p}:k70`).exec();
  assert.deepEqual(piped, [[null, "OK"], [null, 2], [null, "m"]], "pipeline");
  const multi = await redis.multi().incr(`{${p}}:n`).incr(`{${p}}:n`).get(`{${p}}:n`).exec();
  assert.deepEqual(multi, [[null, 1], [null, 2], [null, "2"]], "MULTI/EXEC on one slot");

  // SCAN over the whole cluster with the client's own cursor handling.
  const seen = new Set();
  await new Promise((resolve, reject) => {
    const stream = redis.scanStream({ match: `${p}:k*`, count: 100 });
    stream.on("data", (batch) => batch.forEach((key) => seen.add(key)));
    stream.on("end", resolve);
    stream.on("error", reject);
  });
  // 50 of the 500 were deleted above.
  assert.equal(seen.size, 450, `scanStream found ${seen.size} of the 450 keys`);

  // Pub/sub: a subscriber on the proxy hears a PUBLISH sent through it (the cluster carries it to every node).
  const sub = new Redis({ port });
  const received = new Promise((resolve) => sub.on("message", (channel, message) => resolve([channel, message])));
  assert.equal(await sub.subscribe(`${p}:chan`), 1, "subscribe count");
  await redis.publish(`${p}:chan`, "hello");
  assert.deepEqual(await received, [`${p}:chan`, "hello"], "the message arrives");
  sub.disconnect();

  // Sharded pub/sub: channels on several primaries through one connection; the count is the client's own.
  const shard = new Redis({ port });
  const channels = Array.from({ length: 6 }, (_, i) => `${p}:shard${i}`);
  const heard = [];
  const allHeard = new Promise((resolve) =>
    shard.on("smessage", (channel, message) => {
      heard.push([channel, message]);
      if (heard.length === channels.length) resolve();
    }),
  );
  for (const [i, channel] of channels.entries()) {
    assert.equal(await shard.ssubscribe(channel), i + 1, `ssubscribe ${channel} count`);
  }
  for (const channel of channels) {
    assert.equal(await redis.spublish(channel, `to ${channel}`), 1, `spublish ${channel} reached its subscriber`);
  }
  await allHeard;
  assert.deepEqual(heard.sort(), channels.map((c) => [c, `to ${c}`]).sort(), "each shard message heard once");
  assert.equal(await shard.sunsubscribe(channels[0]), 5, "sunsubscribe count");
  assert.equal(await redis.spublish(channels[0], "gone"), 0, "nobody follows a channel left");
  shard.disconnect();
  redis.disconnect();
}

async function nodeRedisChecks() {
  const p = `${prefix}:nr`;
  const client = createClient({ socket: { port } });
  await client.connect();
  for (let i = 0; i < 200; i++) await client.set(`${p}:k${i}`, String(i));
  const keys = Array.from({ length: 200 }, (_, i) => `${p}:k${i}`);
  assert.deepEqual(await client.mGet(keys), keys.map((_, i) => String(i)), "mGet across slots");
  const results = await client.multi().set(`{${p}}:t`, "1").incrBy(`{${p}}:t`, 5).exec();
  assert.deepEqual(results, ["OK", 6], "multi on one slot");
  assert.equal(await client.dbSize() >= 200, true, "DBSIZE sums the primaries");
  // Sharded pub/sub through a duplicate connection.
  const subscriber = client.duplicate();
  await subscriber.connect();
  let resolveMessage;
  const message = new Promise((resolve) => (resolveMessage = resolve));
  // Resolves once the subscription is confirmed: a publish after it must reach the subscriber.
  await subscriber.sSubscribe(`${p}:shard`, (received) => resolveMessage(received));
  assert.equal(await client.sPublish(`${p}:shard`, "hello"), 1, "sPublish reached the subscriber");
  assert.equal(await message, "hello", "the shard message arrives");
  await subscriber.quit();
  await client.quit();
}

(async () => {
  const started = Date.now();
  await ioredisChecks();
  await nodeRedisChecks();
  const versions = `ioredis ${require("ioredis/package.json").version}, node-redis ${require("redis/package.json").version}`;
  console.log(`ok ${versions} plain clients, cluster mode, in ${((Date.now() - started) / 1000).toFixed(1)}s`);
  process.exit(0);
})().catch((error) => {
  console.error(error);
  process.exit(1);
});
