// The run that tests/training_pytorch_reference.test.ts trains with the CLI and that
// scripts/pytorch_reference/train_reference.py trains independently in PyTorch: a 2-layer, hidden-64 GPT
// on the bundled State of the Union corpus (GPT-2 BPE, vocab padded to 50304: a 3.2M-element word
// embedding whose small gradients an f32 running sum used to drop), no dropout, clipping active.

/** Pretraining flags of the reference run, without --data-path and the output flags. */
export const REFERENCE_FLAGS: readonly string[] = [
  ...["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4"],
  // Positions 64..79 are never used: their embedding rows get exactly zero gradients (1024 zeros),
  // a known answer for --log-num-zeros-in-grad.
  ...["--seq-length", "64", "--max-position-embeddings", "80"],
  ...["--micro-batch-size", "4", "--global-batch-size", "8", "--train-iters", "60"],
  ...["--lr", "1e-3", "--min-lr", "1e-4", "--lr-decay-style", "cosine", "--lr-warmup-iters", "10"],
  ...["--weight-decay", "0.1", "--clip-grad", "1.0", "--hidden-dropout", "0", "--attention-dropout", "0"],
  ...["--seed", "1234", "--split", "90,5,5", "--eval-iters", "1", "--eval-interval", "1000"],
  ...["--tokenizer-type", "GPT2BPETokenizer", "--device", "cpu"],
];
