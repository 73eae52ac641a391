// Reference: @openzeppelin/merkle-tree's StandardMerkleTree on the trees given as JSON on stdin
// ([{encoding, values}]); prints [{root, proofs}] with proofs[i] proving values[i].
const fs = require('fs');
const path = require('path');
const { StandardMerkleTree } = require(path.join(process.argv[2], '@openzeppelin/merkle-tree'));
const trees = JSON.parse(fs.readFileSync(0, 'utf8'));
const out = trees.map(({ encoding, values }) => {
  const tree = StandardMerkleTree.of(values, encoding);
  return { root: tree.root, proofs: values.map((_, i) => tree.getProof(i)) };
});
process.stdout.write(JSON.stringify(out));
