/**
 * Test support for infra/: compiles Bicep with the project's compiler (tools/bicep.sh, which installs
 * it from NuGet when needed) and evaluates the ARM template expressions the tests look at, so that
 * they check what ARM would deploy for given parameter values, not the text of the Bicep files.
 *
 * The evaluator covers the ARM functions the compiled templates here use; an unknown function throws,
 * naming it, rather than guessing.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
export type JsonObject = { [key: string]: Json };

export interface Template {
  readonly parameters?: Record<string, { type: string; defaultValue?: Json; allowedValues?: Json[] }>;
  readonly variables?: JsonObject;
  readonly resources: Resource[];
  readonly outputs?: JsonObject;
}

export interface Resource {
  readonly type: string;
  readonly name: string;
  readonly condition?: Json;
  readonly scope?: string;
  readonly copy?: { name: string; count: Json };
  readonly properties?: JsonObject;
  readonly [key: string]: unknown;
}

/** The path of the compiler tools/bicep.sh resolves (and installs on first use). */
export function bicepPath(): string {
  return execFileSync("bash", [join(ROOT, "tools", "bicep.sh"), "path"], { encoding: "utf8" }).trim();
}

/** Compiles one Bicep file to ARM JSON; returns the template and what the compiler printed on stderr. */
export function compile(bicepFile: string): { template: Template; diagnostics: string } {
  const result = spawnSync(bicepPath(), ["build", join(ROOT, bicepFile), "--stdout"], {
    encoding: "utf8",
    maxBuffer: 64 * 1024 * 1024,
  });
  if (result.status !== 0)
    throw new Error(`bicep build ${bicepFile} failed (exit ${result.status}):\n${result.stderr}`);
  return { template: JSON.parse(result.stdout) as Template, diagnostics: result.stderr };
}

/** A nested module: the Microsoft.Resources/deployments resource, its inline template and its parent. */
export interface Module {
  readonly name: string;
  readonly resource: Resource;
  readonly template: Template;
  readonly parent: Template;
}

/** Every module, at any depth (Bicep compiles modules to deployments with inline templates). */
export function modules(template: Template): Module[] {
  const found: Module[] = [];
  for (const resource of template.resources) {
    if (resource.type !== "Microsoft.Resources/deployments") continue;
    const nested = (resource.properties?.template ?? null) as unknown as Template | null;
    if (!nested) continue;
    found.push({ name: resource.name, resource, template: nested, parent: template }, ...modules(nested));
  }
  return found;
}

export function moduleNamed(template: Template, name: string): Module {
  const found = modules(template).filter((m) => m.name === name);
  if (found.length !== 1) throw new Error(`expected one module named ${name}, found ${found.length}`);
  return found[0]!;
}

/** Every resource of a type in the template and its modules, with the template that declares it. */
export function resourcesOfType(template: Template, type: string): { resource: Resource; template: Template }[] {
  const own = template.resources
    .filter((r) => r.type.toLowerCase() === type.toLowerCase())
    .map((resource) => ({ resource, template }));
  return [
    ...own,
    ...modules(template).flatMap((m) =>
      m.template.resources
        .filter((r) => r.type.toLowerCase() === type.toLowerCase())
        .map((resource) => ({ resource, template: m.template })),
    ),
  ];
}

/** The expression text of a module parameter as the parent passes it, e.g. "[variables('hostStorageName')]". */
export function moduleParameterExpression(module: Module, parameter: string): Json {
  const parameters = module.resource.properties?.parameters as Record<string, { value: Json }> | undefined;
  const entry = parameters?.[parameter];
  if (!entry) throw new Error(`module ${module.name} is not passed parameter ${parameter}`);
  return entry.value;
}

// ---------------------------------------------------------------------------------------------------
// ARM expression evaluation

/** A runtime value ARM only knows during deployment (reference(), list*()): kept symbolic. */
export class RuntimeValue {
  constructor(readonly path: string) {}
  toString(): string {
    return `<${this.path}>`;
  }
}

/** A lambda('x', body) argument of map() or filter(): its body is evaluated per element. */
class Lambda {
  constructor(
    readonly names: string[],
    readonly body: Node,
  ) {}
}

type Value = Json | RuntimeValue | Lambda | Value[] | { [key: string]: Value } | undefined;

type Token =
  | { kind: "string"; value: string }
  | { kind: "number"; value: number }
  | { kind: "ident"; value: string }
  | { kind: "punct"; value: string };

function tokenize(text: string): Token[] {
  const tokens: Token[] = [];
  let i = 0;
  while (i < text.length) {
    const c = text[i]!;
    if (/\s/.test(c)) {
      i++;
    } else if (c === "'") {
      let value = "";
      i++;
      for (;;) {
        if (i >= text.length) throw new Error(`unterminated string in expression: ${text}`);
        if (text[i] === "'") {
          if (text[i + 1] === "'") {
            value += "'";
            i += 2;
            continue;
          }
          i++;
          break;
        }
        value += text[i++];
      }
      tokens.push({ kind: "string", value });
    } else if (/[0-9-]/.test(c)) {
      const match = /^-?\d+/.exec(text.slice(i))!;
      tokens.push({ kind: "number", value: Number(match[0]) });
      i += match[0].length;
    } else if (/[A-Za-z_$]/.test(c)) {
      const match = /^[A-Za-z_$][\w$]*/.exec(text.slice(i))!;
      tokens.push({ kind: "ident", value: match[0] });
      i += match[0].length;
    } else if ("()[],.".includes(c)) {
      tokens.push({ kind: "punct", value: c });
      i++;
    } else {
      throw new Error(`unexpected "${c}" in expression: ${text}`);
    }
  }
  return tokens;
}

type Node =
  | { kind: "literal"; value: string | number }
  | { kind: "call"; name: string; args: Node[] }
  | { kind: "property"; target: Node; name: string }
  | { kind: "index"; target: Node; index: Node };

function parse(text: string): Node {
  const tokens = tokenize(text);
  let position = 0;
  const peek = () => tokens[position];
  const expect = (value: string) => {
    const token = tokens[position++];
    if (!token || token.kind !== "punct" || token.value !== value)
      throw new Error(`expected "${value}" in expression: ${text}`);
  };
  const expression = (): Node => {
    const token = tokens[position++];
    if (!token) throw new Error(`unexpected end of expression: ${text}`);
    let node: Node;
    if (token.kind === "string" || token.kind === "number") node = { kind: "literal", value: token.value };
    else if (token.kind === "ident") {
      expect("(");
      const args: Node[] = [];
      if (!(peek()?.kind === "punct" && peek()?.value === ")")) {
        args.push(expression());
        while (peek()?.kind === "punct" && peek()?.value === ",") {
          position++;
          args.push(expression());
        }
      }
      expect(")");
      node = { kind: "call", name: token.value, args };
    } else throw new Error(`unexpected "${token.value}" in expression: ${text}`);
    for (;;) {
      const next = peek();
      if (next?.kind === "punct" && next.value === ".") {
        position++;
        const name = tokens[position++];
        if (!name || name.kind !== "ident") throw new Error(`expected a property name in expression: ${text}`);
        node = { kind: "property", target: node, name: name.value };
      } else if (next?.kind === "punct" && next.value === "[") {
        position++;
        const index = expression();
        expect("]");
        node = { kind: "index", target: node, index };
      } else return node;
    }
  };
  const node = expression();
  if (position !== tokens.length) throw new Error(`trailing tokens in expression: ${text}`);
  return node;
}

function toArmString(value: Value): string {
  if (typeof value === "string") return value;
  if (typeof value === "number") return String(value);
  if (typeof value === "boolean") return value ? "True" : "False";
  if (value instanceof RuntimeValue) return value.toString();
  return JSON.stringify(value, (_key, v: unknown) => (v instanceof RuntimeValue ? v.toString() : v));
}

function resourceIdOf(prefix: string, type: string, names: string[]): string {
  const typeSegments = type.split("/");
  const namespace = typeSegments[0]!;
  const parts = typeSegments.slice(1).flatMap((segment, i) => [segment, names[i] ?? "?"]);
  return `${prefix}/providers/${namespace}/${parts.join("/")}`;
}

const isResourceType = (value: unknown) => typeof value === "string" && /^[A-Za-z]+\.[A-Za-z.]+\/[A-Za-z]/.test(value);

/** Symbolic deployment context: subscription, resource group and tenant are fixed placeholders. */
export const CONTEXT = {
  subscriptionId: "00000000-0000-0000-0000-00000000000s",
  resourceGroup: "rg-test",
  tenantId: "00000000-0000-0000-0000-00000000000t",
  /** What utcNow('u') returns. */
  deploymentTime: "2026-12-01 03:00:00Z",
};

/**
 * Evaluates the expressions of one template with the given parameter values (defaults fill the rest).
 */
export class Evaluator {
  private readonly variableCache = new Map<string, Value>();
  private readonly copyIndexes = new Map<string, number>();
  /** The bound lambda variables, innermost last. */
  private readonly lambdaScopes: Map<string, Value>[] = [];
  private readonly parameters: Record<string, Value>;

  constructor(
    private readonly template: Template,
    parameters: Readonly<Record<string, unknown>> = {},
  ) {
    this.parameters = { ...(parameters as Record<string, Value>) };
    for (const [name, definition] of Object.entries(template.parameters ?? {})) {
      if (!(name in this.parameters) && definition.defaultValue !== undefined)
        this.parameters[name] = this.value(definition.defaultValue);
    }
  }

  /** Evaluates a JSON value: expression strings ("[...]") are evaluated, property copy loops expanded. */
  value(json: Value): Value {
    if (typeof json === "string") {
      if (json.startsWith("[[")) return json.slice(1);
      if (json.startsWith("[") && json.endsWith("]")) return this.expression(json.slice(1, -1));
      return json;
    }
    if (Array.isArray(json)) return json.map((item) => this.value(item));
    if (json && typeof json === "object" && !(json instanceof RuntimeValue)) {
      const result: { [key: string]: Value } = {};
      for (const [key, item] of Object.entries(json)) {
        if (key === "copy" && Array.isArray(item)) {
          for (const loop of item as { name: string; count: Json; input: Json }[]) {
            const count = this.value(loop.count) as number;
            result[loop.name] = Array.from({ length: count }, (_, i) =>
              this.withCopyIndex(loop.name, i, () => this.value(loop.input)),
            );
          }
        } else {
          // ARM evaluates expression keys too, e.g. userAssignedIdentities: { '[parameters(...)]': {} }.
          result[toArmString(this.value(key))] = this.value(item);
        }
      }
      return result;
    }
    return json;
  }

  expression(text: string): Value {
    return this.evaluate(parse(text));
  }

  variable(name: string): Value {
    if (!this.variableCache.has(name)) {
      const variables = this.template.variables ?? {};
      if (!(name in variables)) throw new Error(`no variable ${name}`);
      this.variableCache.set(name, this.value(variables[name]!));
    }
    return this.variableCache.get(name);
  }

  /** Runs fn with copyIndex() (and copyIndex(name)) bound. */
  withCopyIndex<T>(name: string | undefined, index: number, fn: () => T): T {
    const key = name ?? "";
    const previous = this.copyIndexes.get(key);
    this.copyIndexes.set(key, index);
    try {
      return fn();
    } finally {
      if (previous === undefined) this.copyIndexes.delete(key);
      else this.copyIndexes.set(key, previous);
    }
  }

  /** The instances of a resource: its copy loop expanded and its condition applied. */
  instances(
    resource: Resource,
  ): { name: string; properties: { [key: string]: Value }; resource: { [key: string]: Value } }[] {
    const count = resource.copy ? (this.value(resource.copy.count) as number) : 1;
    const result = [];
    for (let i = 0; i < count; i++) {
      const evaluate = () => {
        if (resource.condition !== undefined && this.value(resource.condition) !== true) return undefined;
        const evaluated = this.value(resource as unknown as Value) as { [key: string]: Value };
        return {
          name: String(evaluated.name),
          properties: (evaluated.properties ?? {}) as { [key: string]: Value },
          resource: evaluated,
        };
      };
      const instance = resource.copy ? this.withCopyIndex(undefined, i, evaluate) : evaluate();
      if (instance) result.push(instance);
    }
    return result;
  }

  private apply(lambda: Value, ...args: Value[]): Value {
    if (!(lambda instanceof Lambda)) throw new Error(`expected a lambda, got ${toArmString(lambda)}`);
    this.lambdaScopes.push(new Map(lambda.names.map((name, i) => [name, args[i]])));
    try {
      return this.evaluate(lambda.body);
    } finally {
      this.lambdaScopes.pop();
    }
  }

  private evaluate(node: Node): Value {
    switch (node.kind) {
      case "literal":
        return node.value;
      case "property": {
        const target = this.evaluate(node.target);
        if (target instanceof RuntimeValue) return new RuntimeValue(`${target.path}.${node.name}`);
        if (target && typeof target === "object" && !Array.isArray(target))
          return (target as Record<string, Value>)[node.name];
        throw new Error(`cannot read .${node.name} of ${toArmString(target)}`);
      }
      case "index": {
        const target = this.evaluate(node.target);
        const index = this.evaluate(node.index);
        if (target instanceof RuntimeValue) return new RuntimeValue(`${target.path}[${toArmString(index)}]`);
        if (Array.isArray(target)) return target[index as number];
        if (target && typeof target === "object") return (target as Record<string, Value>)[String(index)];
        throw new Error(`cannot index ${toArmString(target)}`);
      }
      case "call":
        return this.call(node.name, node.args);
    }
  }

  private call(name: string, argNodes: Node[]): Value {
    const lower = name.toLowerCase();
    // Lazy: only the chosen branch is evaluated, as ARM does (fail() may sit in the other one).
    if (lower === "if") {
      const [condition, whenTrue, whenFalse] = argNodes;
      return this.evaluate(this.evaluate(condition!) === true ? whenTrue! : whenFalse!);
    }
    if (lower === "lambda") {
      const names = argNodes.slice(0, -1).map((n) => toArmString(this.evaluate(n)));
      return new Lambda(names, argNodes[argNodes.length - 1]!);
    }
    const args = argNodes.map((arg) => this.evaluate(arg));
    const str = (i: number) => toArmString(args[i]);
    switch (lower) {
      case "parameters": {
        if (!(str(0) in this.parameters)) throw new Error(`parameter ${str(0)} has no value`);
        return this.parameters[str(0)];
      }
      case "variables":
        return this.variable(str(0));
      case "lambdavariables": {
        const scope = [...this.lambdaScopes].reverse().find((s) => s.has(str(0)));
        if (!scope) throw new Error(`lambdaVariables('${str(0)}') outside its lambda`);
        return scope.get(str(0));
      }
      case "map":
        return (args[0] as Value[]).map((item, i) => this.apply(args[1], item, i));
      case "filter":
        return (args[0] as Value[]).filter((item, i) => this.apply(args[1], item, i) === true);
      case "copyindex": {
        const loop = typeof args[0] === "string" ? args[0] : "";
        const offset = typeof args[0] === "number" ? args[0] : typeof args[1] === "number" ? args[1] : 0;
        const index = this.copyIndexes.get(loop);
        if (index === undefined) throw new Error(`copyIndex(${loop}) outside its loop`);
        return index + offset;
      }
      case "true":
        return true;
      case "false":
        return false;
      case "null":
        return null;
      case "equals":
        return toArmString(args[0]) === toArmString(args[1]) && typeof args[0] === typeof args[1];
      case "not":
        return args[0] !== true;
      case "and":
        return args.every((a) => a === true);
      case "or":
        return args.some((a) => a === true);
      case "empty": {
        const v = args[0];
        if (v === null || v === undefined) return true;
        if (typeof v === "string" || Array.isArray(v)) return v.length === 0;
        if (typeof v === "object" && !(v instanceof RuntimeValue)) return Object.keys(v).length === 0;
        return false;
      }
      case "length": {
        const v = args[0];
        if (typeof v === "string" || Array.isArray(v)) return v.length;
        if (v && typeof v === "object") return Object.keys(v).length;
        throw new Error(`length of ${toArmString(v)}`);
      }
      case "greater":
        return (args[0] as number) > (args[1] as number);
      case "max":
        return Math.max(...(args.flat() as number[]));
      case "string":
        return toArmString(args[0]);
      case "int":
        return Number(args[0]);
      case "add":
        return Number(args[0]) + Number(args[1]);
      case "mul":
        return Number(args[0]) * Number(args[1]);
      // A fixed "now", so a template's deployment time is the same in every test run.
      case "utcnow":
        if (str(0) !== "u") throw new Error(`the test's ARM evaluator has utcNow('u') only, not utcNow('${str(0)}')`);
        return CONTEXT.deploymentTime;
      case "datetimetoepoch": {
        const time = Date.parse(str(0).replace(" ", "T"));
        if (Number.isNaN(time)) throw new Error(`dateTimeToEpoch: "${str(0)}" is not a date-time`);
        return Math.floor(time / 1000);
      }
      case "format":
        return str(0).replace(/\{(\d+)(?::[^}]*)?\}/g, (_m, i: string) => toArmString(args[Number(i) + 1]));
      case "concat":
        return args.every(Array.isArray) ? (args as Value[][]).flat() : args.map(toArmString).join("");
      case "replace":
        return str(0).split(str(1)).join(str(2));
      case "tolower":
        return str(0).toLowerCase();
      case "toupper":
        return str(0).toUpperCase();
      case "trim":
        return str(0).trim();
      case "split":
        return str(0).split(str(1));
      case "join":
        return (args[0] as Value[]).map(toArmString).join(str(1));
      case "last": {
        const v = args[0];
        return typeof v === "string" ? v.slice(-1) : (v as Value[])[(v as Value[]).length - 1];
      }
      case "createobject": {
        const result: Record<string, Value> = {};
        for (let i = 0; i < args.length; i += 2) result[str(i)] = args[i + 1];
        return result;
      }
      case "createarray":
        return args;
      case "union": {
        if (args.every(Array.isArray)) return [...new Set((args as Value[][]).flat())];
        return Object.assign({}, ...(args as object[]));
      }
      case "guid":
      case "uniquestring": {
        const hash = createHash("sha256").update(args.map(toArmString).join("|")).digest("hex");
        return lower === "uniquestring"
          ? hash.slice(0, 13)
          : `${hash.slice(0, 8)}-${hash.slice(8, 12)}-${hash.slice(12, 16)}-${hash.slice(16, 20)}-${hash.slice(20, 32)}`;
      }
      case "subscription":
        return {
          id: `/subscriptions/${CONTEXT.subscriptionId}`,
          subscriptionId: CONTEXT.subscriptionId,
          tenantId: CONTEXT.tenantId,
        };
      case "resourcegroup":
        return {
          id: `/subscriptions/${CONTEXT.subscriptionId}/resourceGroups/${CONTEXT.resourceGroup}`,
          name: CONTEXT.resourceGroup,
          location: "westeurope",
        };
      case "tenant":
        return { tenantId: CONTEXT.tenantId };
      case "resourceid": {
        const typeAt = args.findIndex(isResourceType);
        const before = args.slice(0, typeAt).map(toArmString);
        const subscriptionId = before.length === 2 ? before[0]! : CONTEXT.subscriptionId;
        const group = before.length === 2 ? before[1]! : before.length === 1 ? before[0]! : CONTEXT.resourceGroup;
        return resourceIdOf(
          `/subscriptions/${subscriptionId}/resourceGroups/${group}`,
          str(typeAt),
          args.slice(typeAt + 1).map(toArmString),
        );
      }
      case "subscriptionresourceid": {
        const typeAt = args.findIndex(isResourceType);
        const subscriptionId = typeAt === 1 ? str(0) : CONTEXT.subscriptionId;
        return resourceIdOf(`/subscriptions/${subscriptionId}`, str(typeAt), args.slice(typeAt + 1).map(toArmString));
      }
      case "extensionresourceid":
        return resourceIdOf(str(0), str(1), args.slice(2).map(toArmString));
      case "reference":
        return new RuntimeValue(`reference(${str(0)})`);
      case "fail":
        throw new Error(`fail(): ${str(0)}`);
      default:
        throw new Error(`the test's ARM evaluator does not know ${name}()`);
    }
  }
}

/**
 * The parameters an expression of a template reads directly or through its variables, but not those
 * only inside reference() (a resource's name or id: the value comes from the deployment, not from them).
 */
export function parameterReferences(template: Template, expression: Json): Set<string> {
  const found = new Set<string>();
  const seenVariables = new Set<string>();
  const visitJson = (json: Json | undefined) => {
    if (typeof json === "string") {
      if (json.startsWith("[") && !json.startsWith("[[") && json.endsWith("]")) visit(parse(json.slice(1, -1)));
    } else if (Array.isArray(json)) json.forEach(visitJson);
    else if (json && typeof json === "object") Object.entries(json).forEach(([k, v]) => (visitJson(k), visitJson(v)));
  };
  const visit = (node: Node): void => {
    if (node.kind === "property") return visit(node.target);
    if (node.kind === "index") return (visit(node.target), visit(node.index));
    if (node.kind !== "call") return;
    const name = node.name.toLowerCase();
    const literal = node.args[0]?.kind === "literal" ? String(node.args[0].value) : undefined;
    if (name === "reference") return;
    if (name === "parameters" && literal !== undefined) found.add(literal);
    else if (name === "variables" && literal !== undefined && !seenVariables.has(literal)) {
      seenVariables.add(literal);
      visitJson(template.variables?.[literal]);
    } else node.args.forEach(visit);
  };
  visitJson(expression);
  return found;
}
