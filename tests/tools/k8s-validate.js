#!/usr/bin/env node
// k8s-validate.js: validates Kubernetes objects against the API schemas of
// kubernetes-models@4.5.1 (Kubernetes 1.29+ with native sidecars), with unknown fields
// counted as errors, plus a few checks the API server makes on pods that a schema cannot
// express (unique container names, mounts of declared volumes, port names, what a
// regular init container may not have).
//
//   node tests/tools/k8s-validate.js [--models DIR] FILE...
//
// Each FILE holds JSON: one object, an array of objects, or a List (its items). Prints
// "FILE: Kind namespace/name: /json/pointer: message" for every error and exits 1 when
// there is any, 0 when every object is valid, 2 on bad usage or unreadable input, 77 when
// kubernetes-models is missing and cannot be installed (no npm registry).
//
// kubernetes-models is loaded from DIR/node_modules (--models, $TT_K8S_MODELS, default
// ${XDG_CACHE_HOME:-~/.cache}/tether/kubernetes-models-4.5.1); when it is missing there it
// is installed with `npm install --prefix DIR kubernetes-models@4.5.1`.
//
// Why the extra unknown-field check: kubernetes-models' validators (ajv, compiled from the
// OpenAPI schemas) do not set additionalProperties: false, so `{"bogus": 1}` passes. The
// validator reads every property its schema declares (`data.name`, `data.ports`...), and
// enumerates the keys of maps (labels, annotations, resources' limits...): running it on
// a proxy that records those reads tells, for each object, which fields the schema knows;
// a field it never read is unknown to the schema.
"use strict";

const fs = require("fs");
const path = require("path");
const os = require("os");
const { execFileSync } = require("child_process");

const VERSION = "4.5.1";

function usage(msg) {
    if (msg) process.stderr.write("k8s-validate: " + msg + "\n");
    process.stderr.write("usage: node k8s-validate.js [--models DIR] FILE...\n");
    process.exit(2);
}

function modelsDir(argv) {
    const i = argv.indexOf("--models");
    if (i >= 0) {
        if (i + 1 >= argv.length) usage("--models needs a directory");
        const d = argv[i + 1];
        argv.splice(i, 2);
        return d;
    }
    if (process.env.TT_K8S_MODELS) return process.env.TT_K8S_MODELS;
    const cache = process.env.XDG_CACHE_HOME || path.join(os.homedir(), ".cache");
    return path.join(cache, "tether", "kubernetes-models-" + VERSION);
}

// Loads kubernetes-models from dir, installing it there first when missing.
function loadModels(dir) {
    const pkg = path.join(dir, "node_modules", "kubernetes-models", "package.json");
    let have = false;
    try {
        have = JSON.parse(fs.readFileSync(pkg, "utf8")).version === VERSION;
    } catch (e) {
        have = false;
    }
    if (!have) {
        process.stderr.write("k8s-validate: installing kubernetes-models@" + VERSION + " into " +
                             dir + "\n");
        try {
            fs.mkdirSync(dir, { recursive: true });
            execFileSync("npm", ["install", "--prefix", dir, "--no-audit", "--no-fund",
                                 "kubernetes-models@" + VERSION],
                         { stdio: ["ignore", "ignore", "inherit"], timeout: 300000 });
        } catch (e) {
            process.stderr.write("k8s-validate: cannot install kubernetes-models@" + VERSION +
                                 ": " + e.message + "\n");
            process.exit(77);
        }
    }
    return path.join(dir, "node_modules", "kubernetes-models");
}

// The compiled schema validator for apiVersion/kind, or null for a kind the package lacks.
function validatorFor(root, apiVersion, kind) {
    if (typeof apiVersion !== "string" || typeof kind !== "string") return null;
    if (!/^[A-Za-z0-9]+$/.test(kind) || !/^[a-z0-9.]+(\/[a-z0-9]+)?$/.test(apiVersion)) return null;
    const model = path.join(root, apiVersion, kind + ".js");
    let src;
    try {
        src = fs.readFileSync(model, "utf8");
    } catch (e) {
        return null;
    }
    const m = /_schemas\/(\w+)\.js/.exec(src);
    if (!m) return null;
    return require(path.join(root, "_schemas", m[1] + ".js")).validate;
}

// Wraps value in proxies that record, per object path, the properties read and whether
// its keys were enumerated. seen: Map path -> {read: Set, enumerated: bool, value}.
function track(value, ptr, seen) {
    if (value === null || typeof value !== "object") return value;
    const rec = { read: new Set(), enumerated: false, value };
    seen.set(ptr, rec);
    const cache = new Map();
    return new Proxy(value, {
        get(target, prop, receiver) {
            const v = Reflect.get(target, prop, receiver);
            if (typeof prop !== "string") return v;
            rec.read.add(prop);
            if (v === null || typeof v !== "object" || !Object.prototype.hasOwnProperty.call(target, prop))
                return v;
            if (!cache.has(prop)) cache.set(prop, track(v, ptr + "/" + escapePtr(prop), seen));
            return cache.get(prop);
        },
        ownKeys(target) {
            rec.enumerated = true;
            return Reflect.ownKeys(target);
        },
        has(target, prop) {
            if (typeof prop === "string") rec.read.add(prop);
            return Reflect.has(target, prop);
        },
    });
}

function escapePtr(s) {
    return String(s).replace(/~/g, "~0").replace(/\//g, "~1");
}

// Fields of obj that its schema never looked at: [pointer, ...].
function unknownFields(seen) {
    const out = [];
    for (const [ptr, rec] of seen) {
        if (rec.enumerated || Array.isArray(rec.value)) continue;
        for (const k of Object.keys(rec.value)) {
            if (!rec.read.has(k)) out.push(ptr + "/" + escapePtr(k));
        }
    }
    return out;
}

// Where a kind keeps its pod spec.
const POD_PATHS = {
    Pod: ["spec"],
    Deployment: ["spec", "template", "spec"],
    StatefulSet: ["spec", "template", "spec"],
    DaemonSet: ["spec", "template", "spec"],
    ReplicaSet: ["spec", "template", "spec"],
    Job: ["spec", "template", "spec"],
    CronJob: ["spec", "jobTemplate", "spec", "template", "spec"],
};

// Checks the API server makes on a pod spec that the schema cannot express.
// claims: the names of a StatefulSet's volumeClaimTemplates (volumes too).
function podChecks(spec, ptr, err, claims) {
    if (!spec || typeof spec !== "object") return;
    const names = new Set();
    const vols = new Set((spec.volumes || []).map((v) => v && v.name).concat(claims));
    const dns1123 = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
    const lists = [["initContainers", true], ["containers", false]];
    for (const [field, isInit] of lists) {
        (spec[field] || []).forEach((c, i) => {
            const p = ptr + "/" + field + "/" + i;
            if (!c || typeof c !== "object") return;
            if (typeof c.name === "string") {
                if (names.has(c.name)) err(p + "/name", "duplicate container name " + c.name);
                if (!dns1123.test(c.name) || c.name.length > 63)
                    err(p + "/name", "not a DNS-1123 label: " + c.name);
                names.add(c.name);
            }
            (c.volumeMounts || []).forEach((m, j) => {
                if (m && !vols.has(m.name))
                    err(p + "/volumeMounts/" + j + "/name", "no volume named " + m.name);
            });
            const portNames = new Set();
            (c.ports || []).forEach((pt, j) => {
                if (!pt || pt.name === undefined) return;
                if (!/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/.test(pt.name) || pt.name.length > 15 ||
                    !/[a-z]/.test(pt.name))
                    err(p + "/ports/" + j + "/name", "not an IANA service name: " + pt.name);
                if (portNames.has(pt.name)) err(p + "/ports/" + j + "/name", "duplicate port name");
                portNames.add(pt.name);
            });
            if (isInit) {
                if (c.restartPolicy !== undefined && c.restartPolicy !== "Always")
                    err(p + "/restartPolicy", "an init container's restartPolicy may only be Always");
                if (c.restartPolicy !== "Always") {
                    for (const f of ["startupProbe", "readinessProbe", "livenessProbe", "lifecycle"])
                        if (c[f] !== undefined)
                            err(p + "/" + f, "only a sidecar (restartPolicy: Always) init container may have " + f);
                }
            } else if (c.restartPolicy !== undefined) {
                err(p + "/restartPolicy", "only init containers may have restartPolicy");
            }
        });
    }
    (spec.volumes || []).forEach((v, i) => {
        if (v && v.downwardAPI)
            (v.downwardAPI.items || []).forEach((it, j) => {
                const fp = it && it.fieldRef && it.fieldRef.fieldPath;
                if (fp && !/^metadata\.(name|namespace|uid|labels|annotations)(\['[^']+'\])?$/.test(fp))
                    err(ptr + "/volumes/" + i + "/downwardAPI/items/" + j + "/fieldRef/fieldPath",
                        "not a field a downwardAPI volume can project: " + fp);
            });
    });
}

function describe(obj) {
    const m = (obj && obj.metadata) || {};
    const name = m.name || (m.generateName ? m.generateName + "*" : "(no name)");
    return (obj && obj.kind ? obj.kind : "(no kind)") + " " + (m.namespace ? m.namespace + "/" : "") + name;
}

// Validates one object; returns the number of errors printed.
function validateObject(root, file, obj, where) {
    let n = 0;
    const err = (ptr, msg) => {
        process.stdout.write(file + ": " + describe(obj) + ": " + (ptr || "/") + ": " + msg + "\n");
        n++;
    };
    if (!obj || typeof obj !== "object" || Array.isArray(obj)) {
        process.stdout.write(file + ": " + where + ": not an object\n");
        return 1;
    }
    const validate = validatorFor(root, obj.apiVersion, obj.kind);
    if (!validate) {
        err("", "no schema for apiVersion " + obj.apiVersion + " kind " + obj.kind);
        return n;
    }
    const seen = new Map();
    const ok = validate(track(obj, "", seen));
    if (!ok) {
        for (const e of validate.errors || []) {
            let msg = e.message || (e.keyword === "type" && e.params ? "must be " + e.params.type
                                    : e.keyword + " " + JSON.stringify(e.params || {}));
            if (e.params && e.params.missingProperty) msg += " (" + e.params.missingProperty + ")";
            if (e.params && e.params.allowedValues) msg += ": " + JSON.stringify(e.params.allowedValues);
            err(e.instancePath, msg);
        }
    }
    for (const p of unknownFields(seen)) err(p, "unknown field");
    const pp = POD_PATHS[obj.kind];
    if (pp) {
        let spec = obj;
        for (const k of pp) spec = spec && spec[k];
        const claims = obj.kind === "StatefulSet" && Array.isArray(obj.spec.volumeClaimTemplates)
                           ? obj.spec.volumeClaimTemplates.map((t) => t && t.metadata && t.metadata.name)
                           : [];
        podChecks(spec, "/" + pp.join("/"), err, claims);
    }
    return n;
}

function main() {
    const argv = process.argv.slice(2);
    const dir = modelsDir(argv);
    if (argv.length === 0) usage("no files");
    const root = loadModels(dir);
    let errors = 0, objects = 0;
    for (const file of argv) {
        let doc;
        try {
            doc = JSON.parse(fs.readFileSync(file, "utf8"));
        } catch (e) {
            process.stderr.write("k8s-validate: " + file + ": " + e.message + "\n");
            process.exit(2);
        }
        let items = Array.isArray(doc) ? doc : [doc];
        items = items.flatMap((o) => (o && o.kind === "List" && Array.isArray(o.items) ? o.items : [o]));
        items.forEach((o, i) => {
            objects++;
            errors += validateObject(root, file, o, "[" + i + "]");
        });
    }
    process.stderr.write("k8s-validate: " + objects + " object(s), " + errors + " error(s)\n");
    process.exit(errors ? 1 : 0);
}

main();
