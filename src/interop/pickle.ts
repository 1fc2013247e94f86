// A restricted Python unpickler (protocols 2-5) and a small pickler, for PyTorch checkpoints.
//
// Nothing is ever executed: GLOBAL/STACK_GLOBAL resolve a name against a fixed table of the names a
// checkpoint needs, and any other name fails at once with one line naming it. REDUCE / NEWOBJ / BUILD
// are then interpreted per allowed name (a tensor rebuild becomes a plain record, OrderedDict a map,
// argparse.Namespace an attribute map, ...). Persistent ids (torch's storages) are handed to a
// callback. Opcodes that would construct arbitrary objects (INST, OBJ, EXT*) or need out-of-band
// buffers are refused.

/** A Python tuple (kept distinct from lists so that round trips keep the type). */
export class PyTuple {
  constructor(readonly items: PyValue[]) {}
}

/** dict or collections.OrderedDict; keys are str/int/float/bool/None (what checkpoints use). */
export class PyDict {
  readonly map = new Map<PyKey, PyValue>();
  /** Instance attributes set by BUILD (torch's state_dict OrderedDicts carry `_metadata`). */
  attrs: PyDict | null = null;
  constructor(readonly ordered = false) {}
  get(key: PyKey): PyValue | undefined {
    return this.map.get(key);
  }
  set(key: PyKey, value: PyValue): this {
    this.map.set(key, value);
    return this;
  }
  static from(entries: Iterable<[PyKey, PyValue]>, ordered = false): PyDict {
    const d = new PyDict(ordered);
    for (const [k, v] of entries) d.set(k, v);
    return d;
  }
}

/** Forces a Python float when writing (JS numbers that are integers are written as int). */
export class PyFloat {
  constructor(readonly value: number) {}
}

/** argparse.Namespace: its attributes in pickle order. */
export class PyNamespace {
  constructor(readonly attrs: Map<string, PyValue> = new Map()) {}
}

/** An instance of one of Megatron's own old classes (the fp16 loss scalers pickled into pre-2021
 *  optimizer states): its class name and the attributes BUILD gave it. No code of the class exists here. */
export class PyObject {
  readonly attrs = new Map<string, PyValue>();
  constructor(readonly className: string) {}
}

/** builtins.set / frozenset. */
export class PySet {
  constructor(readonly items: PyValue[], readonly frozen = false) {}
}

/** A torch dtype object (e.g. Megatron's args.params_dtype = torch.float16), by its torch name. */
export class PyTorchDtype {
  constructor(readonly name: string) {}
}

/** A torch storage class named in a persistent id (torch.FloatStorage, torch.UntypedStorage, ...). */
export class PyStorageType {
  constructor(readonly name: string) {}
}

/** A storage reference from a persistent id: resolved by the checkpoint reader. */
export class PyStorageRef {
  constructor(
    readonly storageType: string,
    readonly key: string,
    readonly location: string,
    readonly numel: number,
  ) {}
}

/** A tensor as torch describes it before its storage bytes are attached. */
export class PyTensorRef {
  constructor(
    readonly storage: PyStorageRef,
    readonly storageOffset: number,
    readonly shape: number[],
    readonly stride: number[],
    readonly requiresGrad: boolean,
  ) {}
}

/** numpy.ndarray (Megatron's np_rng_state holds one): dtype string like "<u4", raw bytes. */
export class PyNdarray {
  constructor(
    readonly dtype: string,
    readonly shape: number[],
    readonly fortranOrder: boolean,
    readonly bytes: Uint8Array,
  ) {}
}

export type PyKey = string | number | bigint | boolean | null;
export type PyValue =
  | null
  | boolean
  | number
  | bigint
  | string
  | Uint8Array
  | PyValue[]
  | PyTuple
  | PyDict
  | PyNamespace
  | PySet
  | PyTorchDtype
  | PyStorageType
  | PyStorageRef
  | PyTensorRef
  | PyNdarray
  | PyGlobal
  | PyFloat
  | PyObject
  // Tensors once the checkpoint reader attached their data (see torch_checkpoint.ts).
  | { readonly kind: "tensor" };

/** Storage class names torch pickles, with their element type. */
export const STORAGE_TYPES: Readonly<Record<string, TorchDtypeName>> = {
  FloatStorage: "float32",
  DoubleStorage: "float64",
  HalfStorage: "float16",
  BFloat16Storage: "bfloat16",
  LongStorage: "int64",
  IntStorage: "int32",
  ShortStorage: "int16",
  CharStorage: "int8",
  ByteStorage: "uint8",
  BoolStorage: "bool",
  UntypedStorage: "uint8",
};

export type TorchDtypeName =
  | "float32"
  | "float64"
  | "float16"
  | "bfloat16"
  | "int64"
  | "int32"
  | "int16"
  | "int8"
  | "uint8"
  | "bool";

/** torch.<name> dtype globals accepted (aliases map to the canonical name). */
const TORCH_DTYPES: Readonly<Record<string, TorchDtypeName>> = {
  float32: "float32",
  float: "float32",
  float64: "float64",
  double: "float64",
  float16: "float16",
  half: "float16",
  bfloat16: "bfloat16",
  int64: "int64",
  long: "int64",
  int32: "int32",
  int: "int32",
  int16: "int16",
  short: "int16",
  int8: "int8",
  uint8: "uint8",
  bool: "bool",
};

/** Megatron's old loss-scaler classes, found in optimizer states of checkpoints from 2019-2020 (Megatron
 *  itself aliased these modules to load them). Built as inert PyObject records. */
const OPAQUE_CLASSES: ReadonlySet<string> = new Set(
  ["fp16.loss_scaler", "megatron.fp16.loss_scaler", "megatron.fp16_deprecated.loss_scaler"].flatMap((m) => [
    `${m}.LossScaler`,
    `${m}.DynamicLossScaler`,
  ]),
);

/** Every global the unpickler accepts, "module name" -> what it stands for. */
function allowedGlobal(module: string, name: string): string | null {
  const full = `${module}.${name}`;
  if (OPAQUE_CLASSES.has(full)) return `object:${full}`;
  switch (full) {
    case "torch._utils._rebuild_tensor_v2":
    case "torch._utils._rebuild_tensor":
    case "torch._utils._rebuild_parameter":
    case "collections.OrderedDict":
    case "argparse.Namespace":
    case "builtins.set":
    case "builtins.frozenset":
    case "__builtin__.set":
    case "__builtin__.frozenset":
    case "torch.Size":
    case "_codecs.encode":
    case "numpy.ndarray":
    case "numpy.dtype":
      return full;
    case "numpy.core.multiarray._reconstruct":
    case "numpy._core.multiarray._reconstruct":
      return "numpy._reconstruct";
    case "torch.storage.UntypedStorage":
      return "torch.UntypedStorage";
  }
  if (module === "torch" && name in STORAGE_TYPES) return full;
  if (module === "torch" && name in TORCH_DTYPES) return `dtype:${TORCH_DTYPES[name]}`;
  return null;
}

/** A resolved global (only ever one of the allowed names); a value when passed as an argument
 *  (numpy's _reconstruct receives the ndarray class). */
export class PyGlobal {
  constructor(readonly id: string) {}
}

const MARK = Symbol("mark");
type StackItem = PyValue | typeof MARK;

export interface UnpickleOptions {
  /** Name for error messages (a file and, for zips, the record). */
  source?: string;
  /** torch's persistent_load: receives the persistent id tuple. */
  persistentLoad?: (pid: PyValue) => PyValue;
}

function pyKey(v: StackItem, where: () => string): PyKey {
  if (
    v === null || typeof v === "string" || typeof v === "number" || typeof v === "bigint" ||
    typeof v === "boolean"
  ) {
    return v;
  }
  throw new Error(`${where()}: unsupported dict key type ${describe(v)}`);
}

function describe(v: StackItem): string {
  if (v === MARK) return "mark";
  if (v === null) return "None";
  if (v instanceof PyGlobal) return v.id;
  if (Array.isArray(v)) return "list";
  if (v instanceof Uint8Array) return "bytes";
  if (typeof v === "object") return v.constructor.name;
  return typeof v;
}

function toInt(v: PyValue, what: string): number {
  if (typeof v === "number" && Number.isInteger(v)) return v;
  if (typeof v === "bigint" && v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER)) {
    return Number(v);
  }
  throw new Error(`${what}: expected an integer, found ${describe(v)}`);
}

function intList(v: PyValue, what: string): number[] {
  const items = v instanceof PyTuple ? v.items : Array.isArray(v) ? v : null;
  if (items === null) throw new Error(`${what}: expected a tuple of integers, found ${describe(v)}`);
  return items.map((x) => toInt(x, what));
}

/** Parse `buf` as one pickle (stopping at STOP); returns the value and the bytes consumed. */
export function unpickle(buf: Uint8Array, opts: UnpickleOptions = {}): { value: PyValue; end: number } {
  const src = opts.source ?? "pickle";
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const stack: StackItem[] = [];
  const marks: number[] = [];
  const memo = new Map<number, StackItem>();
  let pos = 0;
  let opPos = 0;
  const where = () => `${src}: byte ${opPos}`;
  const fail = (msg: string): never => {
    throw new Error(`${where()}: ${msg}`);
  };
  const need = (n: number) => {
    if (pos + n > buf.length) fail(`truncated pickle (needs ${n} more bytes, ${buf.length - pos} left)`);
  };
  const u8 = () => (need(1), buf[pos++]);
  const u16 = () => (need(2), pos += 2, dv.getUint16(pos - 2, true));
  const u32 = () => (need(4), pos += 4, dv.getUint32(pos - 4, true));
  const u64 = () => {
    need(8);
    const v = dv.getBigUint64(pos, true);
    pos += 8;
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) fail(`length ${v} too large`);
    return Number(v);
  };
  const bytes = (n: number) => (need(n), pos += n, buf.slice(pos - n, pos));
  const utf8 = (n: number) => {
    try {
      return new TextDecoder("utf-8", { fatal: true }).decode(bytes(n));
    } catch {
      return fail("string is not valid UTF-8");
    }
  };
  const line = () => {
    const e = buf.indexOf(0x0a, pos);
    if (e < 0) fail("unterminated text argument");
    const s = new TextDecoder("latin1").decode(buf.subarray(pos, e));
    pos = e + 1;
    return s;
  };
  const pop = (): StackItem => {
    if (stack.length === 0 || (marks.length > 0 && stack.length <= marks[marks.length - 1])) {
      fail("stack underflow");
    }
    return stack.pop()!;
  };
  const popValue = (): PyValue => {
    const v = pop();
    if (v === MARK) fail("unexpected mark used as a value");
    return v as PyValue;
  };
  const popMark = (): StackItem[] => {
    if (marks.length === 0) fail("no mark on the stack");
    const m = marks.pop()!;
    return stack.splice(m);
  };
  const asValues = (items: StackItem[]): PyValue[] =>
    items.map((v) => (v === MARK ? fail("unexpected mark in a container") : v));
  const top = (): StackItem => {
    if (stack.length === 0) fail("stack underflow");
    return stack[stack.length - 1];
  };
  const setItems = (target: StackItem, kv: StackItem[]) => {
    if (!(target instanceof PyDict)) fail(`SETITEM(S) on ${describe(target)}`);
    if (kv.length % 2 !== 0) fail("odd number of items for SETITEMS");
    for (let i = 0; i < kv.length; i += 2) {
      const v = kv[i + 1];
      if (v === MARK) fail("unexpected mark as a dict value");
      (target as PyDict).set(pyKey(kv[i], where), v as PyValue);
    }
  };
  const longLE = (b: Uint8Array): number | bigint => {
    if (b.length === 0) return 0;
    let v = 0n;
    for (let i = b.length - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[i]);
    if (b[b.length - 1] & 0x80) v -= 1n << BigInt(8 * b.length);
    return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
  };
  const global = (module: string, name: string): PyGlobal | PyValue => {
    const id = allowedGlobal(module, name);
    if (id === null) {
      fail(`refusing global ${module}.${name} (not a name a checkpoint needs; nothing was run)`);
    }
    // Storage classes and dtypes are data (persistent ids, args.params_dtype), not callables.
    if (id!.startsWith("dtype:")) return new PyTorchDtype(id!.slice(6));
    if (id!.startsWith("torch.") && id!.slice(6) in STORAGE_TYPES) return new PyStorageType(id!.slice(6));
    return new PyGlobal(id!);
  };

  for (;;) {
    opPos = pos;
    const op = u8();
    switch (op) {
      case 0x80: // PROTO
        if (u8() > 5) fail("pickle protocol above 5");
        break;
      case 0x95: // FRAME
        u64();
        break;
      case 0x2e: { // STOP
        const v = popValue();
        if (stack.length !== 0) fail("values left on the stack at STOP");
        return { value: v, end: pos };
      }
      case 0x28: // MARK
        marks.push(stack.length);
        stack.push(MARK);
        marks[marks.length - 1] = stack.length;
        break;
      case 0x30: // POP
        if (stack.length > 0 && top() === MARK) {
          stack.pop();
          marks.pop();
        } else pop();
        break;
      case 0x31: // POP_MARK
        popMark();
        stack.pop();
        break;
      case 0x32: // DUP
        stack.push(top());
        break;
      case 0x4e: // NONE
        stack.push(null);
        break;
      case 0x88:
        stack.push(true);
        break;
      case 0x89:
        stack.push(false);
        break;
      case 0x4a: // BININT
        need(4);
        stack.push(dv.getInt32(pos, true));
        pos += 4;
        break;
      case 0x4b: // BININT1
        stack.push(u8());
        break;
      case 0x4d: // BININT2
        stack.push(u16());
        break;
      case 0x8a: // LONG1
        stack.push(longLE(bytes(u8())));
        break;
      case 0x8b: // LONG4
        stack.push(longLE(bytes(u32())));
        break;
      case 0x49: { // INT (text): also protocol 0's bools
        const s = line();
        if (s === "01") stack.push(true);
        else if (s === "00") stack.push(false);
        else if (/^-?\d+$/.test(s)) stack.push(Number(s));
        else fail(`bad INT ${JSON.stringify(s)}`);
        break;
      }
      case 0x4c: { // LONG (text)
        const s = line().replace(/L$/, "");
        if (!/^-?\d+$/.test(s)) fail(`bad LONG ${JSON.stringify(s)}`);
        const b = BigInt(s);
        stack.push(
          b >= BigInt(Number.MIN_SAFE_INTEGER) && b <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(b) : b,
        );
        break;
      }
      case 0x47: // BINFLOAT (big-endian)
        need(8);
        stack.push(dv.getFloat64(pos, false));
        pos += 8;
        break;
      case 0x46: { // FLOAT (text)
        const f = Number(line());
        stack.push(f);
        break;
      }
      case 0x58: // BINUNICODE
        stack.push(utf8(u32()));
        break;
      case 0x8c: // SHORT_BINUNICODE
        stack.push(utf8(u8()));
        break;
      case 0x8d: // BINUNICODE8
        stack.push(utf8(u64()));
        break;
      case 0x54: // BINSTRING (Python 2 str): latin-1, as pickle's default encoding="ASCII" would refuse more
        stack.push(new TextDecoder("latin1").decode(bytes(u32())));
        break;
      case 0x55: // SHORT_BINSTRING
        stack.push(new TextDecoder("latin1").decode(bytes(u8())));
        break;
      case 0x42: // BINBYTES
        stack.push(bytes(u32()));
        break;
      case 0x43: // SHORT_BINBYTES
        stack.push(bytes(u8()));
        break;
      case 0x8e: // BINBYTES8
      case 0x96: // BYTEARRAY8
        stack.push(bytes(u64()));
        break;
      case 0x5d: // EMPTY_LIST
        stack.push([]);
        break;
      case 0x61: { // APPEND
        const v = popValue();
        const l = top();
        if (!Array.isArray(l)) fail(`APPEND to ${describe(l)}`);
        (l as PyValue[]).push(v);
        break;
      }
      case 0x65: { // APPENDS
        const items = asValues(popMark());
        stack.pop(); // the mark
        const l = top();
        if (Array.isArray(l)) (l as PyValue[]).push(...items);
        else if (l instanceof PySet) l.items.push(...items);
        else fail(`APPENDS to ${describe(l)}`);
        break;
      }
      case 0x6c: { // LIST
        const items = asValues(popMark());
        stack.pop();
        stack.push(items);
        break;
      }
      case 0x29: // EMPTY_TUPLE
        stack.push(new PyTuple([]));
        break;
      case 0x74: { // TUPLE
        const items = asValues(popMark());
        stack.pop();
        stack.push(new PyTuple(items));
        break;
      }
      case 0x85:
        stack.push(new PyTuple([popValue()]));
        break;
      case 0x86: {
        const b = popValue(), a = popValue();
        stack.push(new PyTuple([a, b]));
        break;
      }
      case 0x87: {
        const c = popValue(), b = popValue(), a = popValue();
        stack.push(new PyTuple([a, b, c]));
        break;
      }
      case 0x7d: // EMPTY_DICT
        stack.push(new PyDict());
        break;
      case 0x64: { // DICT
        const kv = popMark();
        stack.pop();
        const d = new PyDict();
        setItems(d, kv);
        stack.push(d);
        break;
      }
      case 0x73: { // SETITEM
        const v = pop(), k = pop();
        setItems(top(), [k, v]);
        break;
      }
      case 0x75: { // SETITEMS
        const kv = popMark();
        stack.pop();
        setItems(top(), kv);
        break;
      }
      case 0x8f: // EMPTY_SET
        stack.push(new PySet([]));
        break;
      case 0x90: { // ADDITEMS
        const items = asValues(popMark());
        stack.pop();
        const s = top();
        if (!(s instanceof PySet)) fail(`ADDITEMS to ${describe(s)}`);
        (s as PySet).items.push(...items);
        break;
      }
      case 0x91: { // FROZENSET
        const items = asValues(popMark());
        stack.pop();
        stack.push(new PySet(items, true));
        break;
      }
      case 0x63: { // GLOBAL "module\nname\n"
        const module = line(), name = line();
        stack.push(global(module, name));
        break;
      }
      case 0x93: { // STACK_GLOBAL
        const name = pop(), module = pop();
        if (typeof module !== "string" || typeof name !== "string") fail("STACK_GLOBAL needs two strings");
        stack.push(global(module as string, name as string));
        break;
      }
      case 0x52: { // REDUCE
        const args = popValue();
        const f = pop();
        if (!(f instanceof PyGlobal)) fail(`REDUCE on ${describe(f)}`);
        if (!(args instanceof PyTuple)) fail("REDUCE arguments are not a tuple");
        stack.push(reduce((f as PyGlobal).id, (args as PyTuple).items, where));
        break;
      }
      case 0x81: { // NEWOBJ
        const args = popValue();
        const cls = pop();
        if (!(cls instanceof PyGlobal)) fail(`NEWOBJ on ${describe(cls)}`);
        stack.push(newObj((cls as PyGlobal).id, args, where));
        break;
      }
      case 0x92: { // NEWOBJ_EX
        popValue(); // kwargs
        const args = popValue();
        const cls = pop();
        if (!(cls instanceof PyGlobal)) fail(`NEWOBJ_EX on ${describe(cls)}`);
        stack.push(newObj((cls as PyGlobal).id, args, where));
        break;
      }
      case 0x62: { // BUILD
        const state = popValue();
        build(top(), state, where);
        break;
      }
      case 0x51: { // BINPERSID
        const pid = popValue();
        if (!opts.persistentLoad) fail("persistent id without a persistent_load");
        stack.push(opts.persistentLoad!(pid));
        break;
      }
      case 0x50: { // PERSID (text)
        const pid = line();
        if (!opts.persistentLoad) fail("persistent id without a persistent_load");
        stack.push(opts.persistentLoad!(pid));
        break;
      }
      case 0x71: // BINPUT
        memo.set(u8(), top());
        break;
      case 0x72: // LONG_BINPUT
        memo.set(u32(), top());
        break;
      case 0x70: // PUT (text)
        memo.set(Number(line()), top());
        break;
      case 0x94: // MEMOIZE
        memo.set(memo.size, top());
        break;
      case 0x68: // BINGET
      case 0x6a: // LONG_BINGET
      case 0x67: { // GET (text)
        const i = op === 0x68 ? u8() : op === 0x6a ? u32() : Number(line());
        if (!memo.has(i)) fail(`memo key ${i} not defined`);
        stack.push(memo.get(i)!);
        break;
      }
      case 0x69:
        fail("refusing opcode INST (constructs an arbitrary class)");
        break;
      case 0x6f:
        fail("refusing opcode OBJ (constructs an arbitrary class)");
        break;
      case 0x82:
      case 0x83:
      case 0x84:
        fail("refusing extension-registry opcode EXT");
        break;
      case 0x97:
      case 0x98:
        fail("refusing out-of-band buffer opcode");
        break;
      default:
        fail(`unknown opcode 0x${op.toString(16).padStart(2, "0")}`);
    }
  }
}

function reduce(id: string, args: PyValue[], where: () => string): PyValue {
  const fail = (msg: string): never => {
    throw new Error(`${where()}: ${id}: ${msg}`);
  };
  switch (id) {
    case "torch._utils._rebuild_tensor_v2":
    case "torch._utils._rebuild_tensor": {
      if (args.length < 4) fail(`expected at least 4 arguments, found ${args.length}`);
      const [storage, offset, size, stride] = args;
      if (!(storage instanceof PyStorageRef)) fail(`first argument is ${describe(storage)}, not a storage`);
      const requiresGrad = args.length > 4 ? args[4] === true : false;
      return new PyTensorRef(
        storage as PyStorageRef,
        toInt(offset, `${where()}: storage offset`),
        intList(size, `${where()}: size`),
        intList(stride, `${where()}: stride`),
        requiresGrad,
      );
    }
    case "torch._utils._rebuild_parameter":
      if (!(args[0] instanceof PyTensorRef)) fail(`expected a tensor, found ${describe(args[0])}`);
      return args[0];
    case "collections.OrderedDict": {
      const d = new PyDict(true);
      if (args.length > 0) {
        const items = args[0] instanceof PyTuple
          ? args[0].items
          : Array.isArray(args[0])
          ? args[0]
          : fail("bad items");
        for (const it of items as PyValue[]) {
          const pair = it instanceof PyTuple
            ? it.items
            : Array.isArray(it)
            ? it
            : fail("items must be pairs");
          d.set(pyKey((pair as PyValue[])[0], where), (pair as PyValue[])[1]);
        }
      }
      return d;
    }
    case "torch.Size":
      return new PyTuple(args.length === 0 ? [] : intList(args[0], `${where()}: torch.Size`));
    case "builtins.set":
    case "__builtin__.set":
    case "builtins.frozenset":
    case "__builtin__.frozenset": {
      const items = args.length === 0 ? [] : args[0] instanceof PyTuple ? args[0].items : args[0];
      if (!Array.isArray(items)) fail("expected a list");
      return new PySet([...(items as PyValue[])], id.endsWith("frozenset"));
    }
    case "_codecs.encode": {
      // How protocol 2 pickles bytes: _codecs.encode(str, "latin1").
      const [s, enc] = args;
      if (typeof s !== "string" || (enc !== "latin1" && enc !== "latin-1")) {
        fail("only encode(str, 'latin1')");
      }
      const b = new Uint8Array((s as string).length);
      for (let i = 0; i < b.length; i++) {
        const c = (s as string).charCodeAt(i);
        if (c > 255) fail("character outside latin-1");
        b[i] = c;
      }
      return b;
    }
    case "numpy._reconstruct":
      // ndarray._reconstruct(ndarray, (0,), b'b'): an empty array that BUILD fills.
      return new PyNdarray("|u1", [0], false, new Uint8Array(0));
    case "numpy.dtype": {
      const [code] = args;
      if (typeof code !== "string") fail("expected a dtype code string");
      return new PyNdarray(code as string, [], false, new Uint8Array(0)); // a dtype placeholder; BUILD sets the byte order
    }
  }
  if (id.startsWith("dtype:")) fail("a dtype is not callable");
  return fail("not callable with REDUCE");
}

function newObj(id: string, args: PyValue, where: () => string): PyValue {
  if (id === "argparse.Namespace") return new PyNamespace();
  if (id.startsWith("object:")) return new PyObject(id.slice(7));
  if (id === "collections.OrderedDict") return new PyDict(true);
  if (id === "torch.Size" && args instanceof PyTuple) {
    return new PyTuple(args.items.length === 0 ? [] : intList(args.items[0], `${where()}: torch.Size`));
  }
  throw new Error(`${where()}: NEWOBJ of ${id} is not supported`);
}

function build(target: StackItem, state: PyValue, where: () => string): void {
  const fail = (msg: string): never => {
    throw new Error(`${where()}: BUILD ${msg}`);
  };
  if (target instanceof PyNamespace) {
    if (!(state instanceof PyDict)) return fail("of argparse.Namespace needs a dict");
    for (const [k, v] of (state as PyDict).map) {
      if (typeof k !== "string") fail("Namespace attribute names must be strings");
      target.attrs.set(k as string, v);
    }
    return;
  }
  if (target instanceof PyObject) {
    if (!(state instanceof PyDict)) return fail(`of ${target.className} needs a dict`);
    for (const [k, v] of (state as PyDict).map) target.attrs.set(String(k), v);
    return;
  }
  if (target instanceof PyDict) {
    if (!(state instanceof PyDict)) return fail("of a dict needs a dict of attributes");
    target.attrs = state as PyDict;
    return;
  }
  if (target instanceof PyTensorRef) return; // tensor hooks/attributes: nothing a checkpoint reader needs
  if (target instanceof PyNdarray) {
    const items = state instanceof PyTuple ? state.items : fail("of numpy needs a tuple");
    const st = items as PyValue[];
    if (
      target.shape.length === 0 && target.bytes.length === 0 && st.length >= 8 && typeof st[1] === "string"
    ) {
      // numpy.dtype state: (version, byteorder, subdescr, names, fields, elsize, alignment, flags).
      const code = target.dtype.replace(/^[<>|=]/, "");
      (target as { dtype: string }).dtype = (st[1] === "=" ? "<" : st[1] as string) + code;
      return;
    }
    // ndarray state: (version, shape, dtype, is_fortran, rawdata).
    if (st.length !== 5) fail("of numpy.ndarray: unexpected state");
    const [, shape, dtype, fortran, raw] = st;
    if (!(dtype instanceof PyNdarray)) fail("of numpy.ndarray: dtype missing");
    if (!(raw instanceof Uint8Array)) fail("of numpy.ndarray: only raw byte data (no object arrays)");
    const t = target as { dtype: string; shape: number[]; fortranOrder: boolean; bytes: Uint8Array };
    t.dtype = (dtype as PyNdarray).dtype;
    t.shape = intList(shape, `${where()}: ndarray shape`);
    t.fortranOrder = fortran === true;
    t.bytes = raw as Uint8Array;
    return;
  }
  fail(`on ${describe(target)} is not supported`);
}

// ------------------------------------------------------------------------------------------------
// Pickler: protocol 2, the subset needed to write a checkpoint torch.load(weights_only=True) reads.

/** Writes pickle opcodes; `persistentId` lets the caller emit storages (BINPERSID). */
export class Pickler {
  private parts: Uint8Array[] = [];
  private cur: number[] = [];
  constructor(private readonly hook?: (v: unknown, p: Pickler) => boolean) {}

  private flush() {
    if (this.cur.length) {
      this.parts.push(Uint8Array.from(this.cur));
      this.cur = [];
    }
  }
  op(...b: number[]): void {
    for (const x of b) this.cur.push(x);
  }
  raw(b: Uint8Array): void {
    this.flush();
    this.parts.push(b);
  }
  private u32(n: number) {
    this.op(n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, (n >>> 24) & 0xff);
  }
  str(s: string): void {
    // BINUNICODE only: SHORT_BINUNICODE is protocol 4, which torch's weights_only reader refuses here.
    const b = new TextEncoder().encode(s);
    this.op(0x58);
    this.u32(b.length);
    this.raw(b);
  }
  global(module: string, name: string): void {
    this.op(0x63);
    this.raw(new TextEncoder().encode(`${module}\n${name}\n`));
  }
  int(v: number | bigint): void {
    if (typeof v === "number" && Number.isInteger(v) && v >= 0 && v < 256) this.op(0x4b, v);
    else if (typeof v === "number" && Number.isInteger(v) && v >= 0 && v < 65536) {
      this.op(0x4d, v & 0xff, v >> 8);
    } else if (typeof v === "number" && Number.isInteger(v) && v >= -(2 ** 31) && v < 2 ** 31) {
      this.op(0x4a);
      this.u32(v >>> 0);
    } else {
      // LONG1: minimal two's complement little-endian.
      let b = BigInt(v);
      const out: number[] = [];
      for (;;) {
        out.push(Number(b & 0xffn));
        b >>= 8n;
        const sign = out[out.length - 1] & 0x80;
        if ((b === 0n && !sign) || (b === -1n && sign)) break;
      }
      this.op(0x8a, out.length, ...out);
    }
  }
  tupleOf(items: readonly unknown[]): void {
    if (items.length === 0) return this.op(0x29);
    if (items.length <= 3) {
      for (const it of items) this.value(it);
      return this.op([0x85, 0x86, 0x87][items.length - 1]);
    }
    this.op(0x28);
    for (const it of items) this.value(it);
    this.op(0x74);
  }
  value(v: unknown): void {
    if (this.hook?.(v, this)) return;
    if (v === null || v === undefined) return this.op(0x4e);
    if (v === true) return this.op(0x88);
    if (v === false) return this.op(0x89);
    if (typeof v === "number" || v instanceof PyFloat) {
      if (typeof v === "number" && Number.isInteger(v) && !Object.is(v, -0)) return this.int(v);
      const f = typeof v === "number" ? v : v.value;
      const b = new Uint8Array(9);
      b[0] = 0x47;
      new DataView(b.buffer).setFloat64(1, f, false);
      return this.raw(b);
    }
    if (typeof v === "bigint") return this.int(v);
    if (typeof v === "string") return this.str(v);
    if (v instanceof Uint8Array) {
      this.op(0x42);
      this.u32(v.length);
      return this.raw(v.slice());
    }
    if (Array.isArray(v)) {
      this.op(0x5d);
      if (v.length) {
        this.op(0x28);
        for (const x of v) this.value(x);
        this.op(0x65);
      }
      return;
    }
    if (v instanceof PyTuple) return this.tupleOf(v.items);
    if (v instanceof PyDict) {
      if (v.ordered) {
        this.global("collections", "OrderedDict");
        this.op(0x29, 0x52);
      } else this.op(0x7d);
      this.items(v.map);
      return;
    }
    if (v instanceof PyNamespace) {
      this.global("argparse", "Namespace");
      this.op(0x29, 0x81, 0x7d);
      this.items(v.attrs);
      this.op(0x62);
      return;
    }
    if (v instanceof PySet) {
      this.global("builtins", v.frozen ? "frozenset" : "set");
      this.value(v.items);
      this.op(0x85, 0x52);
      return;
    }
    if (v instanceof PyTorchDtype) return this.global("torch", v.name);
    throw new Error(`pickle: cannot write a value of type ${describe(v as StackItem)}`);
  }
  private items(m: Map<PyKey, PyValue> | Map<string, PyValue>): void {
    if (m.size === 0) return;
    this.op(0x28);
    for (const [k, x] of m) {
      this.value(k);
      this.value(x);
    }
    this.op(0x75);
  }
  /** PROTO 2 ... STOP around the value. */
  dump(v: unknown): Uint8Array {
    this.op(0x80, 2);
    this.value(v);
    this.op(0x2e);
    this.flush();
    const n = this.parts.reduce((a, p) => a + p.length, 0);
    const out = new Uint8Array(n);
    let o = 0;
    for (const p of this.parts) (out.set(p, o), o += p.length);
    this.parts = [];
    return out;
  }
}
