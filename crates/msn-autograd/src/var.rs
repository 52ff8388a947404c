//! The graph: a `Var` is a reference-counted node holding a value, an optional gradient, its
//! parents and the backward rule that feeds them.

use crate::Array;
use std::cell::{Cell, Ref, RefCell};
use std::collections::HashSet;
use std::rc::Rc;

/// Turns the gradient of an op's output (owned: a rule may reuse its memory) into the
/// gradients of its parents (in order). The second argument says which parents need one;
/// the rule may return `None` for the others.
pub(crate) type BackwardFn = Box<dyn FnOnce(Array, &[bool]) -> Vec<Option<Array>>>;

/// A [`BackwardFn`] that also reads the op's own output (second argument), for ops whose
/// derivative is a function of it and that would otherwise keep a copy.
pub(crate) type BackwardWithOutput = Box<dyn FnOnce(Array, &Array, &[bool]) -> Vec<Option<Array>>>;

enum Rule {
    Plain(BackwardFn),
    WithOutput(BackwardWithOutput),
}

struct Node {
    value: RefCell<Array>,
    grad: RefCell<Option<Array>>,
    parents: Vec<Var>,
    backward: RefCell<Option<Rule>>,
    requires_grad: bool,
}

/// A tensor in the computation graph. Cloning a `Var` clones the handle, not the data.
#[derive(Clone)]
pub struct Var(Rc<Node>);

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// True unless inside [`no_grad`].
pub fn is_grad_enabled() -> bool {
    GRAD_ENABLED.with(|g| g.get())
}

/// Runs `f` without recording any op: values only, for evaluation and parameter updates.
pub fn no_grad<T>(f: impl FnOnce() -> T) -> T {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            GRAD_ENABLED.with(|g| g.set(self.0));
        }
    }
    let _restore = Restore(GRAD_ENABLED.with(|g| g.replace(false)));
    f()
}

impl Var {
    fn leaf(value: Array, requires_grad: bool) -> Var {
        Var(Rc::new(Node {
            value: RefCell::new(value),
            grad: RefCell::new(None),
            parents: Vec::new(),
            backward: RefCell::new(None),
            requires_grad,
        }))
    }

    /// A trainable leaf: gradients accumulate into it.
    pub fn parameter(value: Array) -> Var {
        Var::leaf(value, true)
    }

    /// A leaf that needs no gradient (inputs, labels, buffers).
    pub fn constant(value: Array) -> Var {
        Var::leaf(value, false)
    }

    /// Records an op's output. When no parent needs a gradient, or in no-grad mode, the output
    /// is a plain constant and the backward rule is dropped at once.
    pub(crate) fn from_op(value: Array, parents: Vec<Var>, backward: BackwardFn) -> Var {
        Var::recorded(value, parents, Rule::Plain(backward))
    }

    /// [`Var::from_op`] for a rule that reads the output too.
    pub(crate) fn from_op_with_output(
        value: Array,
        parents: Vec<Var>,
        backward: BackwardWithOutput,
    ) -> Var {
        Var::recorded(value, parents, Rule::WithOutput(backward))
    }

    fn recorded(value: Array, parents: Vec<Var>, rule: Rule) -> Var {
        if !is_grad_enabled() || !parents.iter().any(|p| p.requires_grad()) {
            return Var::constant(value);
        }
        Var(Rc::new(Node {
            value: RefCell::new(value),
            grad: RefCell::new(None),
            parents,
            backward: RefCell::new(Some(rule)),
            requires_grad: true,
        }))
    }

    /// The current value.
    pub fn value(&self) -> Ref<'_, Array> {
        self.0.value.borrow()
    }

    /// Replaces the value of a leaf (optimizers and checkpoint loading use this).
    pub fn set_value(&self, value: Array) {
        *self.0.value.borrow_mut() = value;
    }

    /// Runs `f` on the value in place.
    pub fn update(&self, f: impl FnOnce(&mut Array)) {
        f(&mut self.0.value.borrow_mut());
    }

    /// The value's shape.
    pub fn shape(&self) -> Vec<usize> {
        self.value().shape().to_vec()
    }

    /// True for parameters and for ops that depend on one.
    pub fn requires_grad(&self) -> bool {
        self.0.requires_grad
    }

    /// The accumulated gradient, if `backward` reached this node.
    pub fn grad(&self) -> Option<Array> {
        self.0.grad.borrow().clone()
    }

    /// Clears the accumulated gradient.
    pub fn zero_grad(&self) {
        *self.0.grad.borrow_mut() = None;
    }

    /// True for parameters and constants: nodes no op made.
    pub fn is_leaf(&self) -> bool {
        self.0.parents.is_empty()
    }

    /// True when both handles point at the same node.
    pub fn same(&self, other: &Var) -> bool {
        Rc::ptr_eq(&self.0, &other.0)
    }

    /// A copy of the value with no history (like `detach` in PyTorch).
    pub fn detach(&self) -> Var {
        Var::constant(self.value().clone())
    }

    fn accumulate(&self, g: Array) {
        let mut slot = self.0.grad.borrow_mut();
        match slot.as_mut() {
            Some(acc) => *acc += &g,
            None => *slot = Some(g),
        }
    }

    /// Nodes that need gradients, each after all of its parents (iterative DFS).
    fn topological_order(&self) -> Vec<Var> {
        let mut order = Vec::new();
        let mut seen: HashSet<*const Node> = HashSet::new();
        let mut stack: Vec<(Var, bool)> = vec![(self.clone(), false)];
        while let Some((v, expanded)) = stack.pop() {
            if expanded {
                order.push(v);
                continue;
            }
            if !seen.insert(Rc::as_ptr(&v.0)) {
                continue;
            }
            stack.push((v.clone(), true));
            for p in v.0.parents.iter().filter(|p| p.requires_grad()) {
                if !seen.contains(&Rc::as_ptr(&p.0)) {
                    stack.push((p.clone(), false));
                }
            }
        }
        order
    }

    /// Back-propagates from this scalar: every parameter it depends on receives `d self / d p`
    /// added to its gradient. Intermediate gradients and the ops' saved buffers are released
    /// as the sweep passes them, so the graph can be run backward only once.
    pub fn backward(&self) {
        assert_eq!(
            self.value().len(),
            1,
            "backward() starts from a scalar loss"
        );
        if !self.requires_grad() {
            return;
        }
        self.accumulate(Array::ones(self.value().raw_dim()));
        for v in self.topological_order().into_iter().rev() {
            let Some(rule) = v.0.backward.borrow_mut().take() else {
                continue; // a leaf: its gradient stays
            };
            let Some(g) = v.0.grad.borrow_mut().take() else {
                continue;
            };
            let needs: Vec<bool> = v.0.parents.iter().map(Var::requires_grad).collect();
            let grads = match rule {
                Rule::Plain(f) => f(g, &needs),
                Rule::WithOutput(f) => f(g, &v.0.value.borrow(), &needs),
            };
            for (p, gp) in v.0.parents.iter().zip(grads) {
                if let (true, Some(gp)) = (p.requires_grad(), gp) {
                    debug_assert_eq!(gp.shape(), p.value().shape(), "gradient shape");
                    p.accumulate(gp);
                }
            }
        }
    }
}

impl std::fmt::Debug for Var {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Var{:?}", self.shape())
    }
}
