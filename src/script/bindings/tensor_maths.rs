//! Tensor maths bindings: matmul, einsum, exp/log/sqrt, softmax, norms, comparisons, where.

use super::args::guard;
use crate::script::docs::Registrar;
use crate::script::tensor::Tensor;
use crate::script::tensor_maths::{Cmp, Unary};
use candle_core::{Device, Tensor as CTensor};
use rhai::{Array, Dynamic, INT};

/// A Tensor argument, or a number as a 0-d f32 tensor.
fn tensor_or_number(what: &str, v: &Dynamic) -> anyhow::Result<Tensor> {
    if let Some(t) = v.read_lock::<Tensor>() {
        return Ok(t.clone());
    }
    let x = if let Ok(i) = v.as_int() {
        i as f32
    } else if let Ok(f) = v.as_float() {
        f as f32
    } else {
        anyhow::bail!("{what} must be a Tensor or a number, got {}", v.type_name());
    };
    Ok(Tensor(CTensor::new(x, &Device::Cpu)?))
}

fn tensors(arr: &Array) -> anyhow::Result<Vec<Tensor>> {
    arr.iter()
        .enumerate()
        .map(|(k, v)| {
            v.read_lock::<Tensor>().map(|t| t.clone()).ok_or_else(|| {
                anyhow::anyhow!("tensors[{k}] is a {}, expected a Tensor", v.type_name())
            })
        })
        .collect()
}

/// Register the tensor maths (domain "tensor").
pub fn register(r: &mut Registrar) {
    r.func(
        "matmul",
        "matmul(a: Tensor, b: Tensor) -> Tensor",
        "Matrix product as torch.matmul: [..., m, k] @ [..., k, n] -> [..., m, n] with the leading dims broadcast; a 1-D a is a row, a 1-D b a column (dropped from the result), so two vectors give their dot product as a 0-d tensor.",
        |a: Tensor, b: Tensor| guard("matmul", || a.matmul(&b)),
    )
    .func(
        "einsum",
        "einsum(spec: String, tensors: Array) -> Tensor",
        "Einstein summation over 1 to 3 tensors with an explicit output, e.g. \"ij,jk->ik\", \"bij,bjk->bik\", \"i,i->\" (letters only: no ellipsis, no index repeated within one operand).",
        |spec: &str, arr: Array| guard("einsum", || Tensor::einsum(spec, &tensors(&arr)?)),
    );
    let unary = [
        ("exp", Unary::Exp, "Elementwise e^x."),
        (
            "log",
            Unary::Log,
            "Elementwise natural logarithm (NaN below 0, -inf at 0; log(float) on a plain number stays Rhai's base-10 log).",
        ),
        (
            "sqrt",
            Unary::Sqrt,
            "Elementwise square root (NaN below 0).",
        ),
    ];
    for (name, f, doc) in unary {
        let sig = format!("{name}(t: Tensor) -> Tensor");
        r.func(name, &sig, doc, move |t: &mut Tensor| {
            guard(name, || t.unary(f))
        });
    }
    r.func(
        "softmax",
        "softmax(t: Tensor, dim: int) -> Tensor",
        "Softmax along dim (the maximum is subtracted first, so large values do not overflow).",
        |t: &mut Tensor, dim: INT| guard("softmax", || t.softmax(dim, false)),
    )
    .func(
        "log_softmax",
        "log_softmax(t: Tensor, dim: int) -> Tensor",
        "Log of the softmax along dim, computed as x - max - log(sum(exp(x - max))).",
        |t: &mut Tensor, dim: INT| guard("log_softmax", || t.softmax(dim, true)),
    )
    .func(
        "norm",
        "norm(t: Tensor) -> float",
        "L2 (Frobenius) norm of all elements: sqrt of the sum of squares.",
        |t: &mut Tensor| guard("norm", || t.norm_all()),
    )
    .func(
        "norm",
        "norm(t: Tensor, dim: int) -> Tensor",
        "L2 norms along dim (removed from the shape).",
        |t: &mut Tensor, dim: INT| guard("norm", || t.norm_dim(dim)),
    );
    let cmps = [
        ("gt", Cmp::Gt, ">"),
        ("ge", Cmp::Ge, ">="),
        ("lt", Cmp::Lt, "<"),
        ("le", Cmp::Le, "<="),
        ("eq", Cmp::Eq, "=="),
        ("ne", Cmp::Ne, "!="),
    ];
    for (name, op, sym) in cmps {
        let sig = format!("{name}(t: Tensor, other: Tensor|number) -> Tensor");
        let doc = format!(
            "Elementwise t {sym} other as an f32 tensor of 1.0 and 0.0, broadcasting like + (other may be a number)."
        );
        r.func(name, &sig, &doc, move |t: &mut Tensor, other: Dynamic| {
            guard(name, || {
                let rhs = tensor_or_number("other", &other)?;
                t.compare(op, &rhs)
            })
        });
    }
    r.func(
        "where",
        "where(cond: Tensor, a: Tensor|number, b: Tensor|number) -> Tensor",
        "Elementwise a where cond is nonzero (NaN included), b elsewhere; the three broadcast together.",
        |cond: &mut Tensor, a: Dynamic, b: Dynamic| {
            guard("where", || {
                let a = tensor_or_number("a", &a)?;
                let b = tensor_or_number("b", &b)?;
                cond.where_select(&a, &b)
            })
        },
    );
}
