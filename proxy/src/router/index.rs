//! Which of a host group's candidates a request path can reach: a trie over path segments,
//! so a lookup among many routes that differ by path tests a handful, not all of them.
//!
//! `Exact` and `PathPrefix` conditions pin the leading segments of every path they accept
//! (`PathPrefix /api/v1` accepts only paths whose segments start with `api`, `v1`, since a
//! prefix matches whole segments), so such a candidate sits at the trie node for those
//! segments. Regexes, `PathPrefix /` and matches without a path sit at the root. A request
//! descends as far as its own segments lead; only the candidates at the nodes it passes can
//! match, and those lists, each in precedence order, are merged as they are walked. Every
//! candidate that could match is visited, in the same order as a walk of the whole list, so
//! the first one that accepts is the same.

use std::collections::HashMap;

use super::{Candidate, PathCondition};

/// Lists with fewer pinned candidates than this are walked whole: the index saves at most
/// their path comparisons (~30 instructions each), and hashing the request's first segment
/// and merging cost about as much as ten of them (callgrind, `router` bench cases).
const MIN_PINNED: usize = 16;

/// Segments below this depth are not indexed: a candidate pinning more of them sits at the
/// node of its first `MAX_DEPTH`. Bounds the lists a lookup merges, so they fit on the stack.
const MAX_DEPTH: usize = 8;

/// One host group's candidates in precedence order, with their index by path segment.
#[derive(Debug, Clone)]
pub(super) struct CandidateList {
    /// Indices into `Router::candidates`, in precedence order.
    order: Box<[usize]>,
    /// The trie's root; `None` when too few candidates are pinned to be worth it.
    index: Option<Node>,
}

/// Up to this many children are compared one by one rather than hashed: below the first
/// segment a node has few (`/svc1` → `api`), and comparing one string beats hashing it.
const MAX_FEW: usize = 4;

/// A trie node: the candidates whose pinned segments end here, and the segments below.
#[derive(Debug, Clone)]
struct Node {
    /// Positions in `CandidateList::order`, ascending.
    here: Box<[u32]>,
    children: Children,
}

#[derive(Debug, Clone)]
enum Children {
    /// At most `MAX_FEW`.
    Few(Box<[(Box<str>, Node)]>),
    Many(HashMap<Box<str>, Node>),
}

/// `Node` while it is being filled.
#[derive(Default)]
struct NodeBuilder {
    here: Vec<u32>,
    children: HashMap<Box<str>, NodeBuilder>,
}

impl CandidateList {
    /// `order`: indices into `candidates`, in precedence order.
    pub(super) fn new(order: Box<[usize]>, candidates: &[Candidate]) -> Self {
        Self::with_min_pinned(order, candidates, MIN_PINNED)
    }

    /// As `new`, indexing the list when at least `min_pinned` candidates are pinned (tests
    /// index every list that has one).
    pub(super) fn with_min_pinned(
        order: Box<[usize]>,
        candidates: &[Candidate],
        min_pinned: usize,
    ) -> Self {
        let index = build_index(&order, candidates, min_pinned.max(1));
        CandidateList { order, index }
    }

    /// Every candidate, in precedence order.
    #[cfg(test)]
    pub(super) fn all(&self) -> &[usize] {
        &self.order
    }

    /// Calls `f` on the candidates (indices into `Router::candidates`) that may accept `path`,
    /// and no fewer, in precedence order, until it returns `Some`.
    pub(super) fn find_map<T>(
        &self,
        path: &str,
        mut f: impl FnMut(usize) -> Option<T>,
    ) -> Option<T> {
        let Some(root) = &self.index else {
            return self.order.iter().find_map(|&i| f(i));
        };
        // The lists of the nodes on the path's way down, each ascending and disjoint.
        let mut lists: [&[u32]; MAX_DEPTH + 1] = [&[]; MAX_DEPTH + 1];
        lists[0] = &root.here;
        let mut len = 1;
        // A path that does not start with `/` can only be accepted by the root's candidates:
        // every pinned one starts with `/`.
        if let Some(rest) = path.strip_prefix('/') {
            let mut node = root;
            for segment in rest.split('/').take(MAX_DEPTH) {
                let Some(child) = node.children.get(segment) else {
                    break;
                };
                node = child;
                if let Some(slot) = lists.get_mut(len).filter(|_| !node.here.is_empty()) {
                    *slot = &node.here;
                    len += 1;
                }
            }
        }
        let lists = lists.get_mut(..len)?;
        // Merged smallest position first, so the candidates come in `order`'s order.
        loop {
            let mut smallest: Option<(usize, u32)> = None;
            for (k, list) in lists.iter().enumerate() {
                if let Some(&position) = list.first()
                    && smallest.is_none_or(|(_, best)| position < best)
                {
                    smallest = Some((k, position));
                }
            }
            let (k, position) = smallest?;
            if let Some(list) = lists.get_mut(k) {
                *list = list.get(1..).unwrap_or_default();
            }
            if let Some(found) = self.order.get(position as usize).and_then(|&i| f(i)) {
                return Some(found);
            }
        }
    }
}

/// The trie of `order`'s candidates, or `None` when fewer than `min_pinned` are pinned (or
/// the list is too long for `u32` positions).
fn build_index(order: &[usize], candidates: &[Candidate], min_pinned: usize) -> Option<Node> {
    let mut root = NodeBuilder::default();
    let mut pinned = 0;
    for (position, &i) in order.iter().enumerate() {
        let position = u32::try_from(position).ok()?;
        let mut node = &mut root;
        if let Some(segments) = candidates.get(i).and_then(|c| pinned_segments(&c.path)) {
            pinned += 1;
            for segment in segments.take(MAX_DEPTH) {
                node = node.children.entry(segment.into()).or_default();
            }
        }
        node.here.push(position);
    }
    (pinned >= min_pinned).then(|| root.finish())
}

impl NodeBuilder {
    fn finish(self) -> Node {
        let few = self.children.len() <= MAX_FEW;
        let children = self
            .children
            .into_iter()
            .map(|(segment, child)| (segment, child.finish()));
        Node {
            here: self.here.into(),
            children: if few {
                Children::Few(children.collect())
            } else {
                Children::Many(children.collect())
            },
        }
    }
}

impl Children {
    fn get(&self, segment: &str) -> Option<&Node> {
        match self {
            Children::Few(few) => few
                .iter()
                .find(|(name, _)| **name == *segment)
                .map(|(_, child)| child),
            Children::Many(many) => many.get(segment),
        }
    }
}

/// The segments every path that `path` accepts starts with: all of an `Exact` path's and all of
/// a prefix's (`/api/v1` → `api`, `v1`; `/` → one empty segment), as a prefix matches whole
/// segments. `None` for conditions that accept paths differing in their first segment, and
/// for values not starting with `/`, which no normalized path has.
fn pinned_segments(path: &PathCondition) -> Option<std::str::Split<'_, char>> {
    let value = match path {
        PathCondition::Exact(value) => value,
        // The empty prefix is `/`: it accepts every path.
        PathCondition::Prefix(value) if !value.is_empty() => value,
        PathCondition::Prefix(_) | PathCondition::Regex(_) => return None,
    };
    value.strip_prefix('/').map(|rest| rest.split('/'))
}
