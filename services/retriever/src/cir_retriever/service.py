"""RetrieverService: converts each request for the core (`Retriever`) and its answer back; nothing else.

Errors raised by the core are `cir_common.errors` types; the server's interceptor maps them to status codes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from cir.retriever.v1 import retriever_pb2, retriever_pb2_grpc
from cir_retriever import conversions
from cir_retriever.core import Retriever


class RetrieverServicer(retriever_pb2_grpc.RetrieverServiceServicer):
    def __init__(self, core: Retriever) -> None:
        self.core = core

    async def CreateCollection(
        self, request: retriever_pb2.CreateCollectionRequest, context: object
    ) -> retriever_pb2.CreateCollectionResponse:
        settings = conversions.collection_settings_from_proto(request.settings)
        created = await self.core.create_collection(request.collection, settings)
        return retriever_pb2.CreateCollectionResponse(
            collection=request.collection, settings=conversions.collection_settings_to_proto(created)
        )

    async def DeleteImages(
        self, request: retriever_pb2.DeleteImagesRequest, context: object
    ) -> retriever_pb2.DeleteImagesResponse:
        deleted, missing = await self.core.delete_images(request.collection, list(request.ids))
        return retriever_pb2.DeleteImagesResponse(deleted=deleted, not_found_ids=missing)

    async def DeleteCollection(
        self, request: retriever_pb2.DeleteCollectionRequest, context: object
    ) -> retriever_pb2.DeleteCollectionResponse:
        deleted = await self.core.delete_collection(request.collection)
        return retriever_pb2.DeleteCollectionResponse(deleted_images=deleted)

    async def ListCollections(
        self, request: retriever_pb2.ListCollectionsRequest, context: object
    ) -> retriever_pb2.ListCollectionsResponse:
        return retriever_pb2.ListCollectionsResponse(collections=await self.core.list_collections())

    async def GetCollectionInfo(
        self, request: retriever_pb2.GetCollectionInfoRequest, context: object
    ) -> retriever_pb2.GetCollectionInfoResponse:
        return conversions.collection_info_to_proto(await self.core.collection_info(request.collection))

    async def ListStrategies(
        self, request: retriever_pb2.ListStrategiesRequest, context: object
    ) -> retriever_pb2.ListStrategiesResponse:
        return conversions.strategies_to_proto(await self.core.strategies())

    async def IngestImages(
        self, request_iterator: AsyncIterator[retriever_pb2.IngestImagesRequest], context: object
    ) -> AsyncIterator[retriever_pb2.IngestImagesResponse]:
        items = (conversions.ingest_item_from_proto(request) async for request in request_iterator)
        async for event in self.core.ingest(items):
            yield conversions.ingest_event_to_proto(event)

    async def Search(
        self, request: retriever_pb2.SearchRequest, context: grpc.aio.ServicerContext
    ) -> retriever_pb2.SearchResponse:
        budget = self.core.budget(context.time_remaining())
        result = await self.core.search(conversions.search_query_from_proto(request), budget)
        return conversions.search_response_to_proto(result, explain=request.explain)

    async def ExportGalleryFeatures(
        self, request: retriever_pb2.ExportGalleryFeaturesRequest, context: object
    ) -> AsyncIterator[retriever_pb2.ExportGalleryFeaturesResponse]:
        async for page in self.core.export(request.collection, request.page_size):
            yield conversions.gallery_page_to_proto(page)

    async def GetServiceStats(
        self, request: retriever_pb2.GetServiceStatsRequest, context: object
    ) -> retriever_pb2.GetServiceStatsResponse:
        return conversions.stats_to_proto(self.core.stats())

    async def ImportGalleryFeatures(
        self, request_iterator: AsyncIterator[retriever_pb2.ImportGalleryFeaturesRequest], context: object
    ) -> retriever_pb2.ImportGalleryFeaturesResponse:
        batches = (conversions.import_batch_from_proto(request) async for request in request_iterator)
        return conversions.import_counts_to_proto(await self.core.import_features(batches))
