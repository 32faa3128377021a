"""Storefront HTTP routes: the pages a visitor, a customer and an admin click through.

Every page calls the same services as the JSON API, with the same caller (`Principal`), so the
same rules hold: another customer's order is 404 here too, admin pages are 403 to customers.
Forms are plain HTML forms (no JavaScript needed); every POST carries the CSRF token and answers
with a redirect (303) to the page that shows its result, or with the form again and the reason.
"""

from __future__ import annotations

import logging
import re
from datetime import timedelta
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.datastructures import FormData, UploadFile
from starlette.requests import ClientDisconnect

from app.accounting import service as accounting
from app.adapters.resources import Resources
from app.carts import service as carts
from app.carts.store import store_for
from app.catalog import service as catalog
from app.catalog.schemas import ProductCreate, ProductPage, ProductRead
from app.customers import service as customers
from app.customers.schemas import SignIn, SignUp
from app.delivery import service as delivery
from app.delivery.domain import ShipmentStatus
from app.delivery.schemas import ShipmentRead
from app.kernel.errors import Forbidden, InvalidRequest, NotFound, ShopError, Unauthenticated
from app.kernel.schemas import MAX_CENTS, MAX_INT32, MAX_ORDER_ID, SearchText
from app.kernel.security import Principal
from app.orders import service as orders
from app.storefront.pages import render
from app.storefront.sessions import (
    CART_MAX_ITEMS,
    CART_MAX_QUANTITY,
    CSRF_FIELD,
    Visit,
    visit_of,
)
from app.web.deps import ResourcesDep
from app.web.http import include_flat

log = logging.getLogger("shop.storefront")

router = APIRouter(include_in_schema=False)

IMAGE_UPLOAD = re.compile(r"^/shop/admin/products/[0-9]+/image$")
"""The storefront's image upload: its body limit is SHOP_IMAGE_MAX_BYTES (a multipart form)."""

PAGE_SIZE = 24
FEATURED = 8
_PRICE = re.compile(r"^\s*(?:EUR\s*)?(\d{1,7})(?:[.,](\d{1,2}))?\s*$")

PageNumber = Annotated[int, Query(ge=1, le=10_000, description="Page number, from 1.")]
Search = Annotated[SearchText | None, Query(description="Name or SKU contains this.")]
ProductId = Annotated[int, Path(ge=1, le=MAX_INT32)]
OrderId = Annotated[int, Path(ge=1, le=MAX_ORDER_ID)]
ShipmentId = Annotated[int, Path(ge=1, le=MAX_INT32)]


async def _visit(request: Request, res: ResourcesDep) -> Visit:
    return await visit_of(request, res)


VisitDep = Annotated[Visit, Depends(_visit)]


async def _form(request: Request, visit: VisitDep) -> FormData:
    """The posted form, once its CSRF token is checked (403 otherwise)."""
    try:
        form = await request.form(max_files=1, max_fields=20)
    except ClientDisconnect:
        # The client left, or the body limit cut the body off and has answered 413 already:
        # whatever is answered now is dropped, but it must not be logged as the shop's fault.
        raise InvalidRequest("body", "the form ended before all of it was received") from None
    visit.check_csrf(form.get(CSRF_FIELD))
    return form


FormDep = Annotated[FormData, Depends(_form)]


def _text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


def _number(form: FormData, name: str, *, low: int, high: int) -> int:
    text = _text(form, name).strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 10 or not low <= int(text) <= high:
        raise InvalidRequest(
            name, f"{name.replace('_', ' ')} must be a whole number from {low} to {high}"
        )
    return int(text)


def _cents(form: FormData, name: str) -> int:
    """'12.34', '12,3' or '12' euros -> cents, at most MAX_CENTS (the API's bound)."""
    found = _PRICE.match(_text(form, name))
    if found is None:
        raise InvalidRequest(name, "the price must be an amount in euros, like 12.34")
    euros, fraction = found.group(1), (found.group(2) or "0").ljust(2, "0")
    cents = int(euros) * 100 + int(fraction)
    if cents > MAX_CENTS:
        raise InvalidRequest(
            name, f"the price must be at most {MAX_CENTS // 100}.{MAX_CENTS % 100:02d} euros"
        )
    return cents


def _local_path(target: str | None, default: str = "/") -> str:
    """Where to go after signing in: a path on this shop, never another site."""
    if not target or not (target == "/" or target.startswith("/shop/")):
        return default
    if "//" in target or "\\" in target or not all(31 < ord(c) < 127 for c in target):
        return default
    return target


def _redirect(visit: Visit, res: Resources, url: str) -> Response:
    response = RedirectResponse(url, status_code=303)
    visit.write(response, res)
    return response


def _sign_in_first(visit: Visit, res: Resources, request: Request) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return _redirect(visit, res, f"/shop/sign-in?next={quote(target, safe='/')}")


def _admin(visit: Visit) -> Principal:
    if visit.principal is None:
        raise Unauthenticated("sign in as an admin to see this page")
    if not visit.principal.is_admin:
        raise Forbidden("this page is for admins")
    return visit.principal


# --- browsing ----------------------------------------------------------------------------------


@router.get("/")
async def home(request: Request, res: ResourcesDep, visit: VisitDep) -> Response:
    body = await catalog.page_json(
        res.db, res.cache, text=None, limit=FEATURED, offset=0, assets=res.assets
    )
    featured = ProductPage.model_validate_json(body).items
    return render(request, visit, "home.html", public=True, products=featured)


@router.get("/shop")
async def shop_root() -> Response:
    return RedirectResponse("/shop/products", status_code=308)


@router.get("/shop/products")
async def products(
    request: Request, res: ResourcesDep, visit: VisitDep, q: Search = None, page: PageNumber = 1
) -> Response:
    body = await catalog.page_json(
        res.db,
        res.cache,
        text=q or None,
        limit=PAGE_SIZE,
        offset=(page - 1) * PAGE_SIZE,
        assets=res.assets,
    )
    found = ProductPage.model_validate_json(body)
    return render(
        request,
        visit,
        "products.html",
        public=True,
        products=found.items,
        q=q or "",
        page=page,
        has_next=found.next_offset is not None,
    )


@router.get("/shop/products/{product_id}")
async def product(
    request: Request, res: ResourcesDep, visit: VisitDep, product_id: ProductId
) -> Response:
    body = await catalog.product_json(res.db, res.cache, product_id=product_id, assets=res.assets)
    item = ProductRead.model_validate_json(body)
    return render(request, visit, "product.html", product=item)


# --- the cart ----------------------------------------------------------------------------------


async def _cart_view(res: Resources, visit: Visit) -> dict[str, Any]:
    """The cart as the cart page shows it: the customer's cart, priced by the carts service,
    or a visitor's cookie cart priced from the catalog (tax is added at checkout)."""
    if visit.principal is not None:
        cart = await carts.get_cart(
            store_for(res),
            res.db,
            customer_id=visit.principal.customer_id,
            tax_rate_bp=res.settings.tax_rate_bp,
        )
        return {
            "lines": [line.model_dump() for line in cart.lines],
            "subtotal_cents": cart.subtotal_cents,
            "tax_cents": cart.tax_cents,
            "total_cents": cart.total_cents,
            "version": cart.version,
        }
    lines: list[dict[str, Any]] = []
    for product_id, quantity in sorted(visit.cart.items()):
        try:
            item = await catalog.get_product(res.db, product_id=product_id)
        except NotFound:
            lines.append(
                {
                    "product_id": product_id,
                    "quantity": quantity,
                    "name": None,
                    "unit_price_cents": None,
                    "line_total_cents": 0,
                    "problem": "no longer sold; remove it from the cart",
                }
            )
            continue
        short = item.stock < quantity
        lines.append(
            {
                "product_id": product_id,
                "quantity": quantity,
                "name": item.name,
                "unit_price_cents": item.price_cents,
                "line_total_cents": item.price_cents * quantity,
                "problem": f"only {item.stock} in stock" if short else None,
            }
        )
    return {
        "lines": lines,
        "subtotal_cents": sum(line["line_total_cents"] for line in lines),
        "tax_cents": None,
        "total_cents": None,
        "version": None,
    }


@router.get("/shop/cart")
async def cart_page(request: Request, res: ResourcesDep, visit: VisitDep) -> Response:
    return render(request, visit, "cart.html", cart=await _cart_view(res, visit))


async def _set_quantity(res: Resources, visit: Visit, product_id: int, quantity: int) -> None:
    if visit.principal is not None:
        await carts.set_item(
            store_for(res),
            res.db,
            customer_id=visit.principal.customer_id,
            product_id=product_id,
            quantity=quantity,
            tax_rate_bp=res.settings.tax_rate_bp,
        )
        return
    await catalog.get_product(res.db, product_id=product_id)  # 404 for an unknown product
    if product_id not in visit.cart and len(visit.cart) >= CART_MAX_ITEMS:
        raise InvalidRequest(
            "product_id", f"a cart holds at most {CART_MAX_ITEMS} different products"
        )
    visit.set_cart({**visit.cart, product_id: quantity})


@router.post("/shop/cart/items")
async def add_to_cart(res: ResourcesDep, visit: VisitDep, form: FormDep) -> Response:
    product_id = _number(form, "product_id", low=1, high=MAX_INT32)
    quantity = _number(form, "quantity", low=1, high=CART_MAX_QUANTITY)
    if visit.principal is not None:
        # One change of the store, which reads what the cart holds under its own lock (or
        # version check): two tabs adding at once both count.
        await carts.add_items(
            store_for(res),
            res.db,
            customer_id=visit.principal.customer_id,
            items={product_id: quantity},
            tax_rate_bp=res.settings.tax_rate_bp,
        )
    else:
        held = visit.cart.get(product_id, 0)
        await _set_quantity(res, visit, product_id, min(held + quantity, CART_MAX_QUANTITY))
    return _redirect(visit, res, "/shop/cart")


@router.post("/shop/cart/items/{product_id}")
async def change_quantity(
    res: ResourcesDep, visit: VisitDep, form: FormDep, product_id: ProductId
) -> Response:
    quantity = _number(form, "quantity", low=1, high=CART_MAX_QUANTITY)
    await _set_quantity(res, visit, product_id, quantity)
    return _redirect(visit, res, "/shop/cart")


@router.post("/shop/cart/items/{product_id}/remove")
async def remove_from_cart(
    res: ResourcesDep, visit: VisitDep, form: FormDep, product_id: ProductId
) -> Response:
    if visit.principal is not None:
        await carts.remove(
            store_for(res),
            res.db,
            customer_id=visit.principal.customer_id,
            product_id=product_id,
            tax_rate_bp=res.settings.tax_rate_bp,
        )
    elif product_id in visit.cart:
        visit.set_cart({p: q for p, q in visit.cart.items() if p != product_id})
    return _redirect(visit, res, "/shop/cart")


# --- checkout ----------------------------------------------------------------------------------


@router.get("/shop/checkout")
async def checkout_page(request: Request, res: ResourcesDep, visit: VisitDep) -> Response:
    return render(
        request, visit, "checkout.html", cart=await _cart_view(res, visit), next="/shop/checkout"
    )


@router.post("/shop/checkout")
async def checkout(request: Request, res: ResourcesDep, visit: VisitDep, form: FormDep) -> Response:
    if visit.principal is None:
        return _redirect(visit, res, "/shop/checkout")
    version = _number(form, "version", low=0, high=2**53)
    try:
        result = await carts.checkout(
            store_for(res),
            res.databases,
            customer_id=visit.principal.customer_id,
            version=version,
            tax_rate_bp=res.settings.tax_rate_bp,
            idempotency_ttl=timedelta(hours=res.settings.idempotency_ttl_h),
            hold=timedelta(seconds=res.settings.order_hold_s),
            relay=res.relay,
            mailer=res.mailer,
        )
    except ShopError as exc:
        if exc.status_code != 409:
            raise
        return render(
            request,
            visit,
            "checkout.html",
            status_code=409,
            cart=await _cart_view(res, visit),
            next="/shop/checkout",
            error=exc.message,
        )
    return _redirect(visit, res, f"/shop/orders/{result.body['id']}?placed=1")


# --- signing in and out ------------------------------------------------------------------------


async def _merge_visitor_cart(res: Resources, visit: Visit) -> None:
    """A visitor's cart joins the customer's cart on sign-in, in one change of the store; a
    line that no longer fits (a product gone, a full cart) is left out rather than failing the
    sign-in."""
    if not visit.cart or visit.principal is None:
        return
    try:
        await carts.add_items(
            store_for(res),
            res.db,
            customer_id=visit.principal.customer_id,
            items=dict(sorted(visit.cart.items())),
            tax_rate_bp=res.settings.tax_rate_bp,
            skip_unavailable=True,
        )
    except ShopError as exc:  # the cart store busy or unavailable: the sign-in still stands
        log.warning("visitor's cart not merged on sign-in: %s", exc.message)
    visit.set_cart({})


async def _signed_in(res: Resources, visit: Visit, token: str, ttl_s: int, target: str) -> Response:
    visit.sign_in(token, ttl_s, res.verifier.verify(token))
    await _merge_visitor_cart(res, visit)
    return _redirect(visit, res, target)


def _account_page(
    request: Request, visit: VisitDep, *, status_code: int = 200, **context: Any
) -> Response:
    target = _local_path(context.pop("next", None) or request.query_params.get("next"))
    return render(request, visit, "sign_in.html", status_code=status_code, next=target, **context)


def _first_problem(exc: ValidationError) -> tuple[str, str]:
    error = exc.errors()[0]
    field = ".".join(str(part) for part in error.get("loc", ()))
    return field, str(error.get("msg", "not valid"))


@router.get("/shop/sign-in")
async def sign_in_page(request: Request, visit: VisitDep) -> Response:
    return _account_page(request, visit)


@router.get("/shop/sign-up")
async def sign_up_page(request: Request, visit: VisitDep) -> Response:
    return _account_page(request, visit, focus="sign-up")


@router.post("/shop/sign-in")
async def sign_in(request: Request, res: ResourcesDep, visit: VisitDep, form: FormDep) -> Response:
    target = _local_path(_text(form, "next"))
    email = _text(form, "email")
    try:
        credentials = SignIn(email=email, password=_text(form, "password"))
        issued = await customers.sign_in(
            res.db,
            res.passwords,
            res.tokens,
            email=credentials.email,
            password=credentials.password,
            limits=customers.SignInLimits.configured(res.sign_in_limit, res.settings),
            client=request.client.host if request.client else "unknown",
        )
    except ValidationError:
        return _account_page(
            request,
            visit,
            status_code=422,
            next=target,
            email=email,
            sign_in_error="Enter your e-mail address and password.",
        )
    except Unauthenticated:
        return _account_page(
            request,
            visit,
            status_code=401,
            next=target,
            email=email,
            sign_in_error="Wrong e-mail or password.",
        )
    return await _signed_in(res, visit, issued.access_token, issued.expires_in, target)


@router.post("/shop/sign-up")
async def sign_up(request: Request, res: ResourcesDep, visit: VisitDep, form: FormDep) -> Response:
    target = _local_path(_text(form, "next"))
    values = {
        "email": _text(form, "email"),
        "password": _text(form, "password"),
        "full_name": _text(form, "full_name"),
    }
    again = {"new_email": values["email"], "full_name": values["full_name"], "focus": "sign-up"}
    try:
        data = SignUp.model_validate(values)
        await customers.sign_up(res.db, res.passwords, data=data)
    except ValidationError as exc:
        field, reason = _first_problem(exc)
        return _account_page(
            request,
            visit,
            status_code=422,
            next=target,
            sign_up_error=f"{field.replace('_', ' ')}: {reason}",
            **again,
        )
    except ShopError as exc:
        if exc.status_code not in (409, 422):
            raise
        return _account_page(
            request,
            visit,
            status_code=exc.status_code,
            next=target,
            sign_up_error=exc.message,
            **again,
        )
    issued = await customers.sign_in(
        res.db, res.passwords, res.tokens, email=data.email, password=data.password
    )
    return await _signed_in(res, visit, issued.access_token, issued.expires_in, target)


@router.post("/shop/sign-out")
async def sign_out(res: ResourcesDep, visit: VisitDep, form: FormDep) -> Response:
    visit.sign_out()
    return _redirect(visit, res, "/")


# --- my orders ---------------------------------------------------------------------------------


@router.get("/shop/orders")
async def my_orders(
    request: Request, res: ResourcesDep, visit: VisitDep, page: PageNumber = 1
) -> Response:
    if visit.principal is None:
        return _sign_in_first(visit, res, request)
    found = await orders.list_orders(
        res.databases, customer_id=visit.principal.customer_id, limit=20, offset=(page - 1) * 20
    )
    return render(
        request,
        visit,
        "orders.html",
        orders=found.items,
        page=page,
        has_next=found.next_offset is not None,
    )


async def _tracking(res: Resources, order_id: int, principal: Principal) -> ShipmentRead | None:
    try:
        return await delivery.tracking(
            res.databases.delivery, order_id=order_id, principal=principal
        )
    except NotFound:  # no shipment yet: a queue has yet to open it (stage 7)
        return None


@router.get("/shop/orders/{order_id}")
async def order_page(
    request: Request, res: ResourcesDep, visit: VisitDep, order_id: OrderId
) -> Response:
    if visit.principal is None:
        return _sign_in_first(visit, res, request)
    order = await orders.get_order(res.databases, order_id=order_id, principal=visit.principal)
    shipment = await _tracking(res, order_id, visit.principal)
    cancellable = order.status == "placed" and (
        shipment is None or shipment.status in (ShipmentStatus.PENDING, ShipmentStatus.PACKED)
    )
    return render(
        request,
        visit,
        "order.html",
        order=order,
        shipment=shipment,
        cancellable=cancellable,
        placed=request.query_params.get("placed") == "1",
    )


@router.post("/shop/orders/{order_id}/cancel")
async def cancel_order(
    request: Request, res: ResourcesDep, visit: VisitDep, form: FormDep, order_id: OrderId
) -> Response:
    if visit.principal is None:
        return _sign_in_first(visit, res, request)
    await orders.cancel_order(
        res.databases, order_id=order_id, principal=visit.principal, relay=res.relay
    )
    return _redirect(visit, res, f"/shop/orders/{order_id}")


# --- admin -------------------------------------------------------------------------------------


@router.get("/shop/admin")
async def admin_root() -> Response:
    return RedirectResponse("/shop/admin/products", status_code=303)


async def _admin_products_page(
    request: Request,
    res: Resources,
    visit: Visit,
    *,
    q: str | None,
    page: int,
    status_code: int = 200,
    **context: Any,
) -> Response:
    found = await catalog.list_products(
        res.db, text=q or None, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE, assets=res.assets
    )
    return render(
        request,
        visit,
        "admin_products.html",
        status_code=status_code,
        products=found.items,
        q=q or "",
        page=page,
        has_next=found.next_offset is not None,
        **context,
    )


@router.get("/shop/admin/products")
async def admin_products(
    request: Request, res: ResourcesDep, visit: VisitDep, q: Search = None, page: PageNumber = 1
) -> Response:
    if visit.principal is None:
        return _sign_in_first(visit, res, request)
    _admin(visit)
    return await _admin_products_page(request, res, visit, q=q, page=page)


@router.post("/shop/admin/products")
async def admin_create_product(
    request: Request, res: ResourcesDep, visit: VisitDep, form: FormDep
) -> Response:
    _admin(visit)
    try:
        data = ProductCreate.model_validate(
            {
                "sku": _text(form, "sku"),
                "name": _text(form, "name"),
                "description": _text(form, "description"),
                "price_cents": _cents(form, "price"),
                "initial_stock": _number(form, "initial_stock", low=0, high=1_000_000),
            }
        )
        created = await catalog.create_product(
            res.db, data=data, cache=res.cache, assets=res.assets
        )
    except ValidationError as exc:
        field, reason = _first_problem(exc)
        return await _admin_products_page(
            request, res, visit, q=None, page=1, status_code=422, error=f"{field}: {reason}"
        )
    except ShopError as exc:
        if exc.status_code not in (409, 422):
            raise
        return await _admin_products_page(
            request, res, visit, q=None, page=1, status_code=exc.status_code, error=exc.message
        )
    return _redirect(visit, res, f"/shop/admin/products/{created.id}")


@router.get("/shop/admin/products/{product_id}")
async def admin_product(
    request: Request, res: ResourcesDep, visit: VisitDep, product_id: ProductId
) -> Response:
    if visit.principal is None:
        return _sign_in_first(visit, res, request)
    _admin(visit)
    item = await catalog.get_product(res.db, product_id=product_id, assets=res.assets)
    notice = request.query_params.get("done")
    return render(request, visit, "admin_product.html", product=item, notice=notice)


@router.post("/shop/admin/products/{product_id}/price")
async def admin_price(
    res: ResourcesDep, visit: VisitDep, form: FormDep, product_id: ProductId
) -> Response:
    _admin(visit)
    await catalog.change_price(
        res.db,
        product_id=product_id,
        price_cents=_cents(form, "price"),
        cache=res.cache,
        assets=res.assets,
    )
    return _redirect(visit, res, f"/shop/admin/products/{product_id}?done=price")


@router.post("/shop/admin/products/{product_id}/restock")
async def admin_restock(
    res: ResourcesDep, visit: VisitDep, form: FormDep, product_id: ProductId
) -> Response:
    _admin(visit)
    await catalog.restock(
        res.db,
        product_id=product_id,
        quantity=_number(form, "quantity", low=1, high=1_000_000),
        cache=res.cache,
        assets=res.assets,
    )
    return _redirect(visit, res, f"/shop/admin/products/{product_id}?done=restock")


@router.post("/shop/admin/products/{product_id}/image")
async def admin_image(
    res: ResourcesDep, visit: VisitDep, form: FormDep, product_id: ProductId
) -> Response:
    _admin(visit)
    upload = form.get("image")
    if not isinstance(upload, UploadFile):
        raise InvalidRequest("image", "choose an image file (PNG, JPEG or WebP)")
    data = await upload.read(res.settings.image_max_bytes + 1)
    await catalog.set_image(
        res.db,
        product_id=product_id,
        data=data,
        max_bytes=res.settings.image_max_bytes,
        assets=res.assets,
        cache=res.cache,
    )
    return _redirect(visit, res, f"/shop/admin/products/{product_id}?done=image")


@router.get("/shop/admin/shipments")
async def admin_shipments(
    request: Request,
    res: ResourcesDep,
    visit: VisitDep,
    status: Annotated[ShipmentStatus | None, Query()] = None,
    page: PageNumber = 1,
) -> Response:
    if visit.principal is None:
        return _sign_in_first(visit, res, request)
    _admin(visit)
    found = await delivery.list_shipments(
        res.databases.delivery, status=status, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE
    )
    return render(
        request,
        visit,
        "admin_shipments.html",
        shipments=found.items,
        status=status,
        statuses=list(ShipmentStatus),
        page=page,
        has_next=found.next_offset is not None,
    )


@router.post("/shop/admin/shipments/{shipment_id}/advance")
async def admin_advance(
    res: ResourcesDep, visit: VisitDep, form: FormDep, shipment_id: ShipmentId
) -> Response:
    _admin(visit)
    target = _text(form, "to")
    if target not in ("packed", "shipped", "delivered"):
        raise InvalidRequest("to", "the next status is packed, shipped or delivered")
    await delivery.advance_shipment(
        res.databases.delivery, shipment_id=shipment_id, target=ShipmentStatus(target)
    )
    back = _local_path(_text(form, "back"), "/shop/admin/shipments")
    return _redirect(visit, res, back)


@router.get("/shop/admin/ledger")
async def admin_ledger(request: Request, res: ResourcesDep, visit: VisitDep) -> Response:
    if visit.principal is None:
        return _sign_in_first(visit, res, request)
    _admin(visit)
    balance = await accounting.trial_balance(res.databases.accounting)
    return render(request, visit, "admin_ledger.html", balance=balance)


def install(app: Any) -> None:
    """Serve the storefront, with friendly error pages on its paths (the JSON API keeps JSON
    errors). Call once every other exception handler is installed."""
    from app.storefront.pages import install_error_pages

    # A page answers HEAD as it answers GET (the server sends no body): link checkers and
    # monitors ask with HEAD. FastAPI, unlike Starlette, does not add HEAD to GET routes.
    for route in router.routes:
        if isinstance(route, APIRoute) and route.methods and "GET" in route.methods:
            route.methods.add("HEAD")
    include_flat(app, router)
    install_error_pages(app)
