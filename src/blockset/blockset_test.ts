/**
 * Runs the Blockset contract against every supported stack, both orders of crc and rep included.
 * @module
 */

import { testBlocksetContract } from "./blockset_contract.ts";

for (const spec of ["base", "crc,base", "rep=2,base", "rep=3,crc,base", "crc,rep=2,base"]) {
  testBlocksetContract(spec);
}
