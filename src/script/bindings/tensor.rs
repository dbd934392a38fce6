//! Tensor bindings: the `Tensor` type, constructors, indexing, reductions, arithmetic.

use super::args::{RResult, guard, int_array, int_list, usize_list};
use crate::script::docs::Registrar;
use crate::script::tensor::{BinOp, Tensor, check_alloc};
use candle_core::{DType, Device, Tensor as CTensor};
use rhai::{Array, Dynamic, FLOAT, INT};

/// A 0-d result becomes a plain number, anything else stays a tensor.
fn scalar_or_tensor(t: Tensor) -> anyhow::Result<Dynamic> {
    if t.ndim() == 0 {
        t.item()
    } else {
        Ok(Dynamic::from(t))
    }
}

fn tensors(what: &str, arr: &Array) -> anyhow::Result<Vec<Tensor>> {
    arr.iter()
        .enumerate()
        .map(|(k, v)| {
            v.read_lock::<Tensor>().map(|t| t.clone()).ok_or_else(|| {
                anyhow::anyhow!(
                    "{what}: element {k} is a {}, expected a Tensor",
                    v.type_name()
                )
            })
        })
        .collect()
}

/// U1 `topk_md` (transposed form): one `[i0, i1, ..., value]` row per item, largest first.
fn topk_rows(t: &Tensor, k: INT, by_abs: bool) -> anyhow::Result<Array> {
    anyhow::ensure!(k >= 0, "k must be >= 0, got {k}");
    let top = crate::attribution::topk_md(&t.0, k as usize, by_abs)?;
    Ok(top
        .indices
        .into_iter()
        .zip(top.values)
        .map(|(idx, v)| {
            let mut row: Array = idx
                .into_iter()
                .map(|i| Dynamic::from_int(i as INT))
                .collect();
            row.push(Dynamic::from_float(v as FLOAT));
            Dynamic::from_array(row)
        })
        .collect())
}

/// Register the tensor domain.
pub fn register(r: &mut Registrar) {
    r.type_named::<Tensor>(
        "Tensor",
        "An n-dimensional f32 (or integer) array; opaque, use its methods to inspect it.",
    );
    register_constructors(r);
    register_inspection(r);
    register_indexing(r);
    register_reductions(r);
    register_arithmetic(r);
}

fn register_constructors(r: &mut Registrar) {
    r.func(
        "from_array",
        "from_array(values: Array|number) -> Tensor",
        "Build an f32 tensor from nested rectangular arrays of numbers (a number gives a 0-d tensor).",
        |v: Dynamic| guard("from_array", || Tensor::from_array(&v)),
    )
    .func(
        "zeros",
        "zeros(shape: Array) -> Tensor",
        "An f32 tensor of zeros with the given shape.",
        |shape: Array| {
            guard("zeros", || {
                let s = usize_list("shape", &shape)?;
                check_alloc(&s, "a tensor")?;
                Ok(Tensor(CTensor::zeros(s, DType::F32, &Device::Cpu)?))
            })
        },
    )
    .func(
        "ones",
        "ones(shape: Array) -> Tensor",
        "An f32 tensor of ones with the given shape.",
        |shape: Array| {
            guard("ones", || {
                let s = usize_list("shape", &shape)?;
                check_alloc(&s, "a tensor")?;
                Ok(Tensor(CTensor::ones(s, DType::F32, &Device::Cpu)?))
            })
        },
    )
    .func(
        "arange",
        "arange(n: int) -> Tensor",
        "The f32 tensor [0, 1, ..., n-1].",
        |n: INT| {
            guard("arange", || {
                anyhow::ensure!(n >= 0, "n must be >= 0, got {n}");
                check_alloc(&[n as usize], "a tensor")?;
                Tensor::from_f32((0..n).map(|x| x as f32).collect(), &[n as usize])
            })
        },
    )
    .func(
        "stack",
        "stack(tensors: Array, dim: int) -> Tensor",
        "Stack equally shaped tensors along a new dim.",
        |arr: Array, dim: INT| guard("stack", || Tensor::stack(&tensors("stack", &arr)?, dim)),
    )
    .func(
        "cat",
        "cat(tensors: Array, dim: int) -> Tensor",
        "Concatenate tensors along an existing dim.",
        |arr: Array, dim: INT| guard("cat", || Tensor::cat(&tensors("cat", &arr)?, dim)),
    );
}

fn register_inspection(r: &mut Registrar) {
    r.func(
        "shape",
        "shape(t: Tensor) -> Array",
        "The dims of the tensor as an array of ints (also the property t.shape).",
        |t: &mut Tensor| int_array(&t.shape()),
    )
    .getter(
        "shape",
        "t.shape -> Array",
        "The dims of the tensor as an array of ints.",
        |t: &mut Tensor| int_array(&t.shape()),
    )
    .func(
        "ndim",
        "ndim(t: Tensor) -> int",
        "Number of dims (also the property t.ndim).",
        |t: &mut Tensor| t.ndim() as INT,
    )
    .getter(
        "ndim",
        "t.ndim -> int",
        "Number of dims.",
        |t: &mut Tensor| t.ndim() as INT,
    )
    .getter(
        "dtype",
        "t.dtype -> String",
        "Element type: f32, u32, i64, ...",
        |t: &mut Tensor| t.dtype(),
    )
    .func(
        "len",
        "len(t: Tensor) -> int",
        "Size of dim 0 (error for a 0-d tensor).",
        |t: &mut Tensor| {
            guard("len", || {
                t.shape()
                    .first()
                    .map(|&n| n as INT)
                    .ok_or_else(|| anyhow::anyhow!("a 0-d tensor has no length"))
            })
        },
    )
    .func(
        "item",
        "item(t: Tensor) -> number",
        "The value of a one-element tensor.",
        |t: &mut Tensor| guard("item", || t.item()),
    )
    .func(
        "to_array",
        "to_array(t: Tensor) -> Array",
        "Nested arrays of the values (ints for integer tensors); a 0-d tensor gives a number.",
        |t: &mut Tensor| guard("to_array", || t.to_array()),
    )
    .func(
        "to_string",
        "to_string(t: Tensor) -> String",
        "Shape, dtype and a preview of the values (at most 6 per dim).",
        |t: &mut Tensor| t.to_string(),
    )
    .func(
        "to_debug",
        "to_debug(t: Tensor) -> String",
        "Same as to_string (used by the REPL to show values).",
        |t: &mut Tensor| t.to_string(),
    );
}

fn register_indexing(r: &mut Registrar) {
    r.indexer(
        "t[i: int] -> Tensor|number",
        "Select index i (negative counts from the end) along dim 0; a 0-d result is returned as a number.",
        |t: &mut Tensor, i: INT| guard("index", || scalar_or_tensor(t.index(i)?)),
    )
    .func(
        "slice",
        "slice(t: Tensor, dim: int, start: int, end: int) -> Tensor",
        "The half-open range start..end along dim (negative dims and bounds count from the end).",
        |t: &mut Tensor, dim: INT, s: INT, e: INT| guard("slice", || t.slice(dim, s, e)),
    )
    .func(
        "select",
        "select(t: Tensor, dim: int, index: int) -> Tensor",
        "Pick one index along dim, removing that dim.",
        |t: &mut Tensor, dim: INT, i: INT| guard("select", || t.select(dim, i)),
    )
    .func(
        "take",
        "take(t: Tensor, dim: int, indices: Array) -> Tensor",
        "Pick several indices along dim (kept, in the given order).",
        |t: &mut Tensor, dim: INT, idx: Array| {
            guard("take", || t.gather_indices(dim, &int_list("indices", &idx)?))
        },
    )
    .func(
        "reshape",
        "reshape(t: Tensor, shape: Array) -> Tensor",
        "Same values with a new shape (same element count).",
        |t: &mut Tensor, shape: Array| guard("reshape", || t.reshape(&usize_list("shape", &shape)?)),
    )
    .func(
        "transpose",
        "transpose(t: Tensor, dim1: int, dim2: int) -> Tensor",
        "Swap two dims.",
        |t: &mut Tensor, a: INT, b: INT| guard("transpose", || t.transpose(a, b)),
    )
    .func(
        "topk_md",
        "topk_md(t: Tensor, k: int) -> Array",
        "The k largest elements, each as [i0, i1, ..., value] (multi-dim index then value), largest first.",
        |t: &mut Tensor, k: INT| guard("topk_md", || topk_rows(t, k, false)),
    )
    .func(
        "topk_md",
        "topk_md(t: Tensor, k: int, by_abs: bool) -> Array",
        "Like topk_md(t, k), ranking by absolute value when by_abs is true.",
        |t: &mut Tensor, k: INT, by_abs: bool| guard("topk_md", || topk_rows(t, k, by_abs)),
    );
}

fn register_reductions(r: &mut Registrar) {
    type Whole = fn(&Tensor) -> anyhow::Result<FLOAT>;
    let whole: [(&str, &str, &str, Whole); 4] = [
        (
            "sum",
            "Sum of all elements.",
            "Sums along dim (removed from the shape).",
            Tensor::sum_all,
        ),
        (
            "mean",
            "Mean of all elements.",
            "Means along dim (removed from the shape).",
            Tensor::mean_all,
        ),
        (
            "max",
            "Largest element.",
            "Maxima along dim (removed from the shape).",
            Tensor::max_all,
        ),
        (
            "min",
            "Smallest element.",
            "Minima along dim (removed from the shape).",
            Tensor::min_all,
        ),
    ];
    for (name, doc, dim_doc, f) in whole {
        let sig = format!("{name}(t: Tensor) -> float");
        r.func(name, &sig, doc, move |t: &mut Tensor| guard(name, || f(t)));
        let sig = format!("{name}(t: Tensor, dim: int) -> Tensor");
        r.func(name, &sig, dim_doc, move |t: &mut Tensor, dim: INT| {
            guard(name, || t.reduce_dim(name, dim))
        });
    }
    r.func(
        "argmax",
        "argmax(t: Tensor) -> int",
        "Flat (row-major) index of the largest element.",
        |t: &mut Tensor| guard("argmax", || t.argmax_all()),
    )
    .func(
        "argmax",
        "argmax(t: Tensor, dim: int) -> Tensor",
        "Indices (i64) of the largest elements along dim.",
        |t: &mut Tensor, dim: INT| guard("argmax", || t.reduce_dim("argmax", dim)),
    )
    .func(
        "abs",
        "abs(t: Tensor) -> Tensor",
        "Elementwise absolute value.",
        |t: &mut Tensor| guard("abs", || t.abs()),
    );
}

fn register_arithmetic(r: &mut Registrar) {
    let ops = [
        (
            "+",
            BinOp::Add,
            "Elementwise sum (broadcasting); with a number, adds it to every element.",
        ),
        (
            "-",
            BinOp::Sub,
            "Elementwise difference (broadcasting); with a number, subtracts elementwise.",
        ),
        (
            "*",
            BinOp::Mul,
            "Elementwise product (broadcasting); with a number, scales.",
        ),
        (
            "/",
            BinOp::Div,
            "Elementwise quotient (broadcasting); with a number, divides elementwise.",
        ),
    ];
    for (name, op, doc) in ops {
        r.func(
            name,
            &format!("Tensor {name} Tensor -> Tensor"),
            doc,
            move |a: Tensor, b: Tensor| guard(name, || a.binary(op, &b)),
        );
        r.func(
            name,
            &format!("Tensor {name} float -> Tensor"),
            doc,
            move |a: Tensor, s: FLOAT| guard(name, || a.scalar_op(op, s, false)),
        );
        r.func(
            name,
            &format!("float {name} Tensor -> Tensor"),
            doc,
            move |s: FLOAT, a: Tensor| guard(name, || a.scalar_op(op, s, true)),
        );
        r.func(
            name,
            &format!("Tensor {name} int -> Tensor"),
            doc,
            move |a: Tensor, s: INT| guard(name, || a.scalar_op(op, s as FLOAT, false)),
        );
        r.func(
            name,
            &format!("int {name} Tensor -> Tensor"),
            doc,
            move |s: INT, a: Tensor| guard(name, || a.scalar_op(op, s as FLOAT, true)),
        );
    }
    r.func(
        "-",
        "-Tensor -> Tensor",
        "Elementwise negation.",
        |a: Tensor| -> RResult<Tensor> { guard("-", || a.neg()) },
    );
}
