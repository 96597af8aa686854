// Reads a JSON list of LogQL expressions on standard input and writes, for each, the
// offsets where Grafana's LogQL grammar (@grafana/lezer-logql, the parser Grafana's own query
// editor uses) found a syntax error: [] when the expression parses.
const { parser } = require("@grafana/lezer-logql");

let input = "";
process.stdin.on("data", (chunk) => (input += chunk));
process.stdin.on("end", () => {
  const results = JSON.parse(input).map((expr) => {
    const errors = [];
    parser.parse(expr).iterate({
      enter: (node) => {
        if (node.type.isError) errors.push(node.from);
      },
    });
    return errors;
  });
  process.stdout.write(JSON.stringify(results));
});
