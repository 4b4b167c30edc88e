//! The data-flow graph: a directed acyclic bipartite graph of sources and compute nodes.

use std::collections::{BTreeMap, HashMap, VecDeque};

use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::EdgeRef;
use petgraph::Direction;

use crate::{Error, Name, NodeId, Result};

/// A vertex of the graph.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Vertex {
    /// A data source.
    Source(Name),
    /// A compute node.
    Node(NodeId),
}

impl std::fmt::Display for Vertex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Vertex::Source(n) => write!(f, "source {n}"),
            Vertex::Node(id) => write!(f, "node {id}"),
        }
    }
}

/// An edge of the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edge {
    /// Data flows along it: source -> node (an input) or node -> source (an output).
    Flow,
    /// An out-of-band relation between two sources (`dkt source link`); never part of the
    /// flow, never checked for cycles.
    Link,
}

/// The project's graph.
///
/// Invariants, enforced by every method that adds to it: flow edges go source -> node or
/// node -> source, never node -> node or source -> source; flow edges form no cycle; link
/// edges join sources only.
#[derive(Debug, Default, Clone)]
pub struct Graph {
    g: StableDiGraph<Vertex, Edge>,
    index: HashMap<Vertex, NodeIndex>,
}

impl Graph {
    /// An empty graph.
    pub fn new() -> Self {
        Self::default()
    }

    fn vertex(&mut self, v: Vertex) -> NodeIndex {
        if let Some(i) = self.index.get(&v) {
            return *i;
        }
        let i = self.g.add_node(v.clone());
        self.index.insert(v, i);
        i
    }

    /// Add a source (idempotent).
    pub fn add_source(&mut self, name: &Name) {
        self.vertex(Vertex::Source(name.clone()));
    }

    /// True when the graph holds this source.
    pub fn has_source(&self, name: &Name) -> bool {
        self.index.contains_key(&Vertex::Source(name.clone()))
    }

    /// Add an edge between two existing vertices, checking the bipartite and acyclic rules.
    pub fn add_edge(&mut self, from: &Vertex, to: &Vertex, kind: Edge) -> Result<()> {
        self.try_add_edge(from, to, kind).map(|_| ())
    }

    /// [`add_edge`](Self::add_edge), returning the new edge (`None` if it was there).
    fn try_add_edge(
        &mut self,
        from: &Vertex,
        to: &Vertex,
        kind: Edge,
    ) -> Result<Option<petgraph::stable_graph::EdgeIndex>> {
        let (Some(&a), Some(&b)) = (self.index.get(from), self.index.get(to)) else {
            let missing = if self.index.contains_key(from) {
                to
            } else {
                from
            };
            return Err(Error::not_found("graph vertex", missing.to_string()));
        };
        match (from, to, kind) {
            (Vertex::Source(_), Vertex::Node(_), Edge::Flow)
            | (Vertex::Node(_), Vertex::Source(_), Edge::Flow)
            | (Vertex::Source(_), Vertex::Source(_), Edge::Link) => {}
            _ => {
                return Err(Error::Conflict(format!(
                    "cannot add a {} edge from {from} to {to}: data flows source -> node -> source, and links join sources only",
                    if kind == Edge::Flow { "flow" } else { "link" }
                )))
            }
        }
        if kind == Edge::Flow {
            if let Some(path) = self.flow_path(b, a) {
                let mut names: Vec<String> = path.iter().map(|i| self.g[*i].to_string()).collect();
                names.push(self.g[b].to_string());
                return Err(Error::Conflict(format!(
                    "adding {from} -> {to} would create a cycle: {}",
                    names.join(" -> ")
                )));
            }
        }
        if self.g.edges_connecting(a, b).any(|e| *e.weight() == kind) {
            return Ok(None);
        }
        Ok(Some(self.g.add_edge(a, b, kind)))
    }

    /// Add a node with its inputs and outputs (all sources must exist). Either the whole
    /// node is added or, on error, nothing.
    pub fn add_node(&mut self, id: NodeId, inputs: &[Name], outputs: &[Name]) -> Result<()> {
        for s in inputs.iter().chain(outputs) {
            if !self.has_source(s) {
                return Err(Error::not_found("source", s.as_str()));
            }
        }
        if let Some(s) = inputs.iter().find(|s| outputs.contains(s)) {
            return Err(Error::Conflict(format!(
                "node {id} would read and write source {s}: a cycle source {s} -> node {id} -> source {s}"
            )));
        }
        let v = Vertex::Node(id);
        let existed = self.index.contains_key(&v);
        let i = self.vertex(v.clone());
        // Undo by hand on error (cloning the graph per node would make loading quadratic).
        let mut added = Vec::new();
        let edges = inputs
            .iter()
            .map(|s| (Vertex::Source(s.clone()), v.clone()))
            .chain(
                outputs
                    .iter()
                    .map(|s| (v.clone(), Vertex::Source(s.clone()))),
            );
        for (from, to) in edges {
            match self.try_add_edge(&from, &to, Edge::Flow) {
                Ok(e) => added.extend(e),
                Err(e) => {
                    for edge in added {
                        self.g.remove_edge(edge);
                    }
                    if !existed {
                        self.g.remove_node(i);
                        self.index.remove(&v);
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// A path of flow edges from `a` to `b`, if any (BFS, so the shortest).
    fn flow_path(&self, a: NodeIndex, b: NodeIndex) -> Option<Vec<NodeIndex>> {
        let mut prev: HashMap<NodeIndex, NodeIndex> = HashMap::new();
        let mut queue = VecDeque::from([a]);
        let mut seen = std::collections::HashSet::from([a]);
        while let Some(i) = queue.pop_front() {
            if i == b {
                let mut path = vec![b];
                let mut cur = b;
                while let Some(p) = prev.get(&cur) {
                    path.push(*p);
                    cur = *p;
                }
                path.reverse();
                return Some(path);
            }
            for e in self.g.edges_directed(i, Direction::Outgoing) {
                if *e.weight() == Edge::Flow && seen.insert(e.target()) {
                    prev.insert(e.target(), i);
                    queue.push_back(e.target());
                }
            }
        }
        None
    }

    /// The nodes that read `source`.
    pub fn readers(&self, source: &Name) -> Vec<NodeId> {
        self.neighbors(&Vertex::Source(source.clone()), Direction::Outgoing)
    }

    /// The nodes that write `source`.
    pub fn writers(&self, source: &Name) -> Vec<NodeId> {
        self.neighbors(&Vertex::Source(source.clone()), Direction::Incoming)
    }

    fn neighbors(&self, v: &Vertex, dir: Direction) -> Vec<NodeId> {
        let Some(&i) = self.index.get(v) else {
            return Vec::new();
        };
        let mut out: Vec<NodeId> = self
            .g
            .edges_directed(i, dir)
            .filter(|e| *e.weight() == Edge::Flow)
            .filter_map(|e| {
                let other = if dir == Direction::Outgoing {
                    e.target()
                } else {
                    e.source()
                };
                match &self.g[other] {
                    Vertex::Node(id) => Some(*id),
                    Vertex::Source(_) => None,
                }
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Every node, in a topological order of the flow (a node comes after every node that
    /// writes one of its inputs); ties are broken by node ID, so the order is deterministic.
    pub fn topo_nodes(&self) -> Vec<NodeId> {
        let mut indegree: BTreeMap<NodeIndex, usize> = BTreeMap::new();
        for i in self.g.node_indices() {
            let d = self
                .g
                .edges_directed(i, Direction::Incoming)
                .filter(|e| *e.weight() == Edge::Flow)
                .count();
            indegree.insert(i, d);
        }
        let mut ready: std::collections::BTreeSet<(Option<NodeId>, NodeIndex)> = indegree
            .iter()
            .filter(|(_, d)| **d == 0)
            .map(|(i, _)| (self.node_key(*i), *i))
            .collect();
        let mut out = Vec::new();
        while let Some(first) = ready.iter().next().cloned() {
            ready.remove(&first);
            let i = first.1;
            if let Vertex::Node(id) = &self.g[i] {
                out.push(*id);
            }
            for e in self.g.edges_directed(i, Direction::Outgoing) {
                if *e.weight() != Edge::Flow {
                    continue;
                }
                let d = indegree.entry(e.target()).or_default();
                *d -= 1;
                if *d == 0 {
                    ready.insert((self.node_key(e.target()), e.target()));
                }
            }
        }
        out
    }

    fn node_key(&self, i: NodeIndex) -> Option<NodeId> {
        match &self.g[i] {
            Vertex::Node(id) => Some(*id),
            Vertex::Source(_) => None,
        }
    }

    /// Every node downstream of `node` (reading, directly or not, what it writes).
    pub fn downstream_nodes(&self, node: &NodeId) -> Vec<NodeId> {
        let Some(&start) = self.index.get(&Vertex::Node(*node)) else {
            return Vec::new();
        };
        let mut seen = std::collections::HashSet::from([start]);
        let mut queue = VecDeque::from([start]);
        let mut out = Vec::new();
        while let Some(i) = queue.pop_front() {
            for e in self.g.edges_directed(i, Direction::Outgoing) {
                if *e.weight() == Edge::Flow && seen.insert(e.target()) {
                    if let Vertex::Node(id) = &self.g[e.target()] {
                        out.push(*id);
                    }
                    queue.push_back(e.target());
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Command, NodeSpec};

    fn n(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    fn id(cmd: &str) -> NodeId {
        NodeSpec::new(Command::Argv(vec![cmd.into()])).id()
    }

    #[test]
    fn rejects_cycles_and_names_the_path() {
        let mut g = Graph::new();
        for s in ["a", "b", "c"] {
            g.add_source(&n(s));
        }
        g.add_node(id("x"), &[n("a")], &[n("b")]).unwrap();
        g.add_node(id("y"), &[n("b")], &[n("c")]).unwrap();
        let e = g.add_node(id("z"), &[n("c")], &[n("a")]).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("cycle"), "{msg}");
        assert!(
            msg.contains("source a") && msg.contains("source c"),
            "{msg}"
        );
        // Nothing of the failed node stays behind.
        assert!(g.readers(&n("c")).is_empty());
        let e = g.add_node(id("w"), &[n("a")], &[n("a")]).unwrap_err();
        assert!(e.to_string().contains("read and write"));
    }

    #[test]
    fn rejects_non_bipartite_edges() {
        let mut g = Graph::new();
        g.add_source(&n("a"));
        g.add_source(&n("b"));
        g.add_node(id("x"), &[n("a")], &[]).unwrap();
        g.add_node(id("y"), &[], &[n("b")]).unwrap();
        let x = Vertex::Node(id("x"));
        let y = Vertex::Node(id("y"));
        assert!(g.add_edge(&x, &y, Edge::Flow).is_err());
        let (a, b) = (Vertex::Source(n("a")), Vertex::Source(n("b")));
        assert!(g.add_edge(&a, &b, Edge::Flow).is_err());
        assert!(g.add_edge(&a, &x, Edge::Link).is_err());
        // Links between sources may even go "backwards": they are not flow.
        g.add_edge(&b, &a, Edge::Link).unwrap();
        g.add_edge(&a, &b, Edge::Link).unwrap();
    }

    #[test]
    fn topological_order_and_downstream() {
        let mut g = Graph::new();
        for s in ["a", "b", "c", "d"] {
            g.add_source(&n(s));
        }
        g.add_node(id("last"), &[n("c")], &[n("d")]).unwrap();
        g.add_node(id("first"), &[n("a")], &[n("b")]).unwrap();
        g.add_node(id("mid"), &[n("b")], &[n("c")]).unwrap();
        assert_eq!(g.topo_nodes(), vec![id("first"), id("mid"), id("last")]);
        assert_eq!(
            g.downstream_nodes(&id("first")),
            vec![id("mid"), id("last")]
        );
        assert_eq!(g.readers(&n("b")), vec![id("mid")]);
        assert_eq!(g.writers(&n("b")), vec![id("first")]);
    }
}
