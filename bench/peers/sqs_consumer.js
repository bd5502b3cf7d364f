// bbc/sqs-consumer with a no-op handler, for bench/ (run by bench.peers).
//
// node sqs_consumer.js QUEUE_URL ENDPOINT PROGRESS_FILE (message|batch)
//   message: handleMessage (its default style): each message deleted by its own DeleteMessage
//   batch:   handleMessageBatch: one DeleteMessageBatch per received batch
// batchSize 10, waitTimeSeconds 20. The running count is written to PROGRESS_FILE every 20 ms.
"use strict";
const fs = require("fs");
const { Consumer } = require("sqs-consumer");
const { SQSClient } = require("@aws-sdk/client-sqs");

const [queueUrl, endpoint, progress, mode] = process.argv.slice(2);
const sqs = new SQSClient({
  region: "us-east-1",
  endpoint,
  credentials: { accessKeyId: "testing", secretAccessKey: "testing" },
});
let count = 0;
let written = -1;
const fd = fs.openSync(progress, "w");
function flush() {
  if (count !== written) {
    fs.writeSync(fd, String(count).padStart(12) + "\n", 0);
    written = count;
  }
}
const options = { queueUrl, sqs, batchSize: 10, waitTimeSeconds: 20 };
if (mode === "batch") {
  options.handleMessageBatch = async (messages) => {
    count += messages.length;
    return messages;
  };
} else {
  options.handleMessage = async (message) => {
    count += 1;
    return message;
  };
}
const consumer = Consumer.create(options);
consumer.on("error", (err) => console.error("error", err.message));
consumer.on("processing_error", (err) => console.error("processing_error", err.message));
setInterval(flush, 20);
flush();
consumer.start();
process.on("SIGTERM", () => {
  consumer.stop();
  flush();
  process.exit(0);
});
