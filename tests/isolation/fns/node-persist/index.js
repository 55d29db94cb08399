// The persist attack in the node runtime: a file in /tmp, in the function
// directory and in /, and a detached child that outlives the handler.
const fs = require("fs");
const path = require("path");
const { spawn } = require("child_process");

const MARKER = "faas-isolation-node-persist";
const PLACES = ["/tmp", "/dev/shm", __dirname, "/"];

function markedProcesses() {
  const found = [];
  for (const pid of fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(pid) || Number(pid) === process.pid) continue;
    try {
      const cmdline = fs.readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").join(" ");
      if (cmdline.includes(MARKER)) found.push(cmdline.trim());
    } catch (e) {}
  }
  return found;
}

exports.handler = async (event) => {
  const foundFiles = PLACES.map((d) => path.join(d, MARKER)).filter((p) => fs.existsSync(p));
  const foundProcesses = markedProcesses();
  const planted = [];
  const refused = {};
  for (const d of PLACES) {
    try {
      fs.writeFileSync(path.join(d, MARKER), String(event.tag || ""));
      planted.push(path.join(d, MARKER));
    } catch (e) {
      refused[d] = e.code;
    }
  }
  const child = spawn(process.execPath, ["-e", "setInterval(() => {}, 1000)", MARKER], {
    detached: true,
    stdio: "ignore",
  });
  child.unref();
  await new Promise((r) => setTimeout(r, 200));
  return { foundFiles, foundProcesses, planted, refused, running: markedProcesses() };
};
