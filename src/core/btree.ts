// sorted-btree is CommonJS with an `exports.default` class; under Node ESM the
// default import is the exports object. Import the B+ tree from here instead.
import * as mod from 'sorted-btree';

type Mod = typeof mod;
type Ctor = Mod['default'] extends { default: infer C } ? C : Mod['default'];
export const BTree = ((mod as any).default?.default ?? (mod as any).default) as Ctor;
export type BTree<K = any, V = any> = import('sorted-btree').default<K, V>;
