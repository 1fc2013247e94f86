// Text generation without the model: Megatron 2021's sampling and the token-by-token driver.
export * from "./sampling.ts";
export * from "./generate.ts";
