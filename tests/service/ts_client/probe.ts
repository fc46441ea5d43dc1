// Compiled with `tsc --strict` against the types the README's keepfit-types.mjs generates from a live deployment
// (tests/service/test_generated_ts_client.py): the bodies a TypeScript client builds, and a hit's fields as it reads them.
import type { components, paths } from "./keepfit";

type Schemas = components["schemas"];
const image = new Blob([new Uint8Array([0xff, 0xd8, 0xff])], { type: "image/jpeg" });

// a file is a Blob; the fields with defaults may be left out
const classify: Schemas["ClassifyForm"] = { image };
const classifyNamed: paths["/v1/classify"]["post"]["requestBody"]["content"]["multipart/form-data"] = {
  image,
  categories: ["normal", "glaucoma"],
  top_k: 1,
};
const search: Schemas["SearchRequest"] = { query: "drusen" };
const searchByImage: Schemas["SearchForm"] = { image };
const embed: Schemas["EmbedTextRequest"] = { text: "optic disc cupping" };
// a classifier from uploaded examples: no field conflicts with another (a pattern of names made them all Blobs)
const create: Schemas["CreateClassifierForm"] = {
  name: "mine",
  text_prior: false,
  examples: [image, image, image, image],
  labels: ["first", "first", "second", "second"],
};
const createFromIndex: Schemas["CreateClassifierRequest"] = {
  name: "indexed",
  categories: [{ label: "first", ids: [1, 2] }, { label: "second", ids: [3, 4] }],
};

// every hit has its SHA-256 and size
function describe(hit: Schemas["SearchHit"]): string {
  const sha256: string = hit.sha256;
  const pixels: number = hit.width * hit.height;
  return `${hit.id} ${sha256.slice(0, 16)} ${pixels}`;
}

export { classify, classifyNamed, search, searchByImage, embed, create, createFromIndex, describe };
