// The package loads api.proto at run time: a copy goes into dist/.
const fs = require("fs");
const path = require("path");
const from = path.join(__dirname, "..", "..", "..", "proto", "faas", "v1", "api.proto");
const to = path.join(__dirname, "..", "dist", "proto", "faas", "v1", "api.proto");
fs.mkdirSync(path.dirname(to), { recursive: true });
fs.copyFileSync(from, to);
