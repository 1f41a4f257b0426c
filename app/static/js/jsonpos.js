// Where each value of a JSON text is: a small JSON parser that records, for every path
// ("jobs.2.operation"), the line and the character range of its value (and of its key),
// so an API error naming a field can be shown at that place in the editor. It accepts
// exactly what JSON.parse accepts; call it only on text that JSON.parse took.

export function locate(text) {
  const spots = new Map(); // path -> {start, end, keyStart, keyEnd}
  let i = 0;
  const ws = () => { while (i < text.length && " \t\n\r".includes(text[i])) i++; };
  const str = () => {
    const start = i++;
    while (i < text.length && text[i] !== '"') i += text[i] === "\\" ? 2 : 1;
    i++;
    return [start, i, JSON.parse(text.slice(start, i))];
  };
  const value = (path) => {
    ws();
    const start = i;
    const c = text[i];
    if (c === "{") {
      i++; ws();
      if (text[i] === "}") i++;
      else for (;;) {
        ws();
        const [ks, ke, key] = str();
        ws(); i++; // :
        const p = path ? `${path}.${key}` : key;
        value(p);
        const spot = spots.get(p);
        spot.keyStart = ks; spot.keyEnd = ke;
        ws();
        if (text[i++] === "}") break;
      }
    } else if (c === "[") {
      i++; ws();
      if (text[i] === "]") i++;
      else for (let n = 0; ; n++) {
        value(path ? `${path}.${n}` : String(n));
        ws();
        if (text[i++] === "]") break;
      }
    } else if (c === '"') {
      str();
    } else {
      while (i < text.length && !",]} \t\n\r".includes(text[i])) i++;
    }
    spots.set(path, { start, end: i });
  };
  value("");
  return spots;
}

/** "jobs[3].operation", "jobs.3.operation", "body.jobs.3" -> "jobs.3.operation" */
export function normalPath(field) {
  if (!field) return "";
  return field.replace(/\[(\d+)\]/g, ".$1").replace(/^body\.?/, "").replace(/^\./, "");
}

/** The nearest located path for `field`: itself, or the closest parent that exists. */
export function spotFor(spots, field) {
  let p = normalPath(field);
  for (;;) {
    if (spots.has(p)) return { path: p, ...spots.get(p) };
    if (!p) return null;
    p = p.includes(".") ? p.slice(0, p.lastIndexOf(".")) : "";
  }
}

export function lineOf(text, offset) {
  let line = 1;
  for (let k = 0; k < offset && k < text.length; k++) if (text[k] === "\n") line++;
  return line;
}
