// Writes tests/data/finetune/: tiny RACE / MNLI / QQP files in the real formats (RACE JSON documents
// in RACE/{train,dev}/middle/*.txt, the GLUE TSV headers and columns) over the words of the BERT
// tests' tiny vocabulary (tests/helpers/bert_tiny.ts: w0..w59). Each task is separable by one word,
// so a tiny BERT can learn it in a few epochs:
//   MNLI: sentence2 holds w1 (contradiction), w2 (entailment) or w3 (neutral);
//   QQP: question2 holds w1 (is_duplicate 1) or w2 (0);
//   RACE: the right option holds w1, the others do not.
// Run once: deno run -A scripts/finetune_toy_data.ts (deterministic; the files are committed).

const OUT = new URL("../tests/data/finetune/", import.meta.url).pathname;

function lcg(seed: number) {
  let x = seed;
  return (n: number) => {
    x = (x * 1103515245 + 12345) % 2147483648;
    return (x >> 8) % n;
  };
}

/** `n` filler words from w10..w59, with `marker` at a random place when given. */
function words(rand: (n: number) => number, n: number, marker?: string): string {
  const w = Array.from({ length: n }, () => `w${10 + rand(50)}`);
  if (marker) w.splice(rand(n + 1), 0, marker);
  return w.join(" ");
}

function write(path: string, text: string) {
  Deno.mkdirSync(path.slice(0, path.lastIndexOf("/")), { recursive: true });
  Deno.writeTextFileSync(path, text);
}

const MNLI_LABELS = ["contradiction", "entailment", "neutral"];

function mnli(file: string, n: number, seed: number, dev: boolean) {
  const rand = lcg(seed);
  const head = [
    "index",
    "promptID",
    "pairID",
    "genre",
    "sentence1_binary_parse",
    "sentence2_binary_parse",
    "sentence1_parse",
    "sentence2_parse",
    "sentence1",
    "sentence2",
    ...(dev ? ["label1", "label2", "label3", "label4", "label5"] : ["label1"]),
    "gold_label",
  ];
  const rows = [head.join("\t")];
  for (let i = 0; i < n; i++) {
    const y = rand(3), label = MNLI_LABELS[y];
    const s1 = words(rand, 3 + rand(3)), s2 = words(rand, 2 + rand(3), `w${y + 1}`);
    const labels = dev ? [label, label, label, label, label] : [label];
    rows.push(
      [
        i,
        1000 + i,
        `${1000 + i}n`,
        "fiction",
        `( ${s1} )`,
        `( ${s2} )`,
        `(ROOT ${s1})`,
        `(ROOT ${s2})`,
        s1,
        s2,
      ]
        .concat(labels, [label]).join("\t"),
    );
  }
  write(`${OUT}MNLI/${file}`, rows.join("\n") + "\n");
}

function qqp(file: string, n: number, seed: number) {
  const rand = lcg(seed);
  const rows = ["id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate"];
  for (let i = 0; i < n; i++) {
    const y = rand(2);
    const q1 = words(rand, 3 + rand(3)), q2 = words(rand, 2 + rand(3), y === 1 ? "w1" : "w2");
    rows.push([i, 2 * i + 1, 2 * i + 2, q1, q2, y].join("\t"));
  }
  write(`${OUT}QQP/${file}`, rows.join("\n") + "\n");
}

function race(split: string, files: number, questions: number, seed: number) {
  const rand = lcg(seed);
  for (let f = 0; f < files; f++) {
    const qs: string[] = [], opts: string[][] = [], ans: string[] = [];
    for (let q = 0; q < questions; q++) {
      const right = rand(4);
      // Half the questions have a blank ("_") that the option fills, as RACE's cloze questions.
      qs.push(q % 2 === 0 ? `${words(rand, 2)} _ ${words(rand, 1)}` : words(rand, 3));
      opts.push(
        Array.from({ length: 4 }, (_, k) => words(rand, 1 + rand(2), k === right ? "w1" : undefined)),
      );
      ans.push("ABCD"[right]);
    }
    const doc = {
      answers: ans,
      options: opts,
      questions: qs,
      article: words(rand, 8),
      id: `middle${f + 1}.txt`,
    };
    write(`${OUT}RACE/${split}/middle/${f + 1}.txt`, JSON.stringify(doc) + "\n");
  }
}

mnli("train.tsv", 48, 11, false);
mnli("dev_matched.tsv", 18, 12, true);
mnli("dev_mismatched.tsv", 12, 13, true);
qqp("train.tsv", 48, 21);
qqp("dev.tsv", 20, 22);
race("train", 4, 6, 31);
race("dev", 2, 5, 32);
console.log(`wrote ${OUT}`);
